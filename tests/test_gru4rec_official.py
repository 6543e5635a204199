"""Reading the official GRU4Rec's output for the side-by-side comparison (scripts/compare_gru4rec.py)."""

import pytest

from lstm_rec.jobs.gru4rec_official import ComparisonError, parse_official_output, run_official

# The lines the official run.py prints around training and evaluation, with made-up numbers.
OUTPUT = """Creating GRU4Rec model on device "cpu"
Loading training data...
Started training
Epoch1 --> loss: 6.123456 	(12.34s) 	[4073.51 mb/s | 5612 e/s]
Total training time: 171.42s
Loading test data...
Starting evaluation (cut-off=[5, 10, 20], using conservative mode for tiebreaking)
Evaluation took 2.05s
Recall@5: 0.512000 MRR@5: 0.330000
Recall@10: 0.604000 MRR@10: 0.342000
Recall@20: 0.681000 MRR@20: 0.359000
"""


def test_parse_official_output_reads_time_and_metrics():
    result = parse_official_output(OUTPUT, "rsc15_xe_shared_100_best")
    assert result.train_seconds == 171.42
    assert result.recall == {5: 0.512, 10: 0.604, 20: 0.681}
    assert result.mrr == {5: 0.33, 10: 0.342, 20: 0.359}


def test_unreadable_official_output_names_what_is_missing():
    with pytest.raises(ComparisonError, match="0 'Total training time' lines"):
        parse_official_output("Traceback (most recent call last):\nValueError: boom\n", "x")


def test_run_official_needs_a_checkout(tmp_path):
    with pytest.raises(ComparisonError, match=r"the official run\.py is not at"):
        run_official(tmp_path, "python", "rsc15_xe_shared_100_best", "train.tsv", "test.tsv", threads=1)
