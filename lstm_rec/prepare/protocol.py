"""A published preprocessing protocol as settings: cleaning, then the test and validation splits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lstm_rec.prepare.events import Events, PrepareError
from lstm_rec.prepare.filters import Step, clean
from lstm_rec.prepare.split import SPLIT_BY, day_cut, drop_unseen, split_last_days

SPLITS = ("train_full", "test", "train_tr", "train_valid")
DEDUP = ("none", "consecutive")


@dataclass(frozen=True)
class Prepared:
    """The four splits (named as in SPLITS) and what each cleaning step left."""

    splits: dict[str, Events]
    steps: list[Step]


@dataclass(frozen=True)
class Protocol:
    """From raw clicks to train_full/test and train_tr/train_valid; the keys of ``dataset.protocol``.

    Steps: drop repeated clicks (``dedup: consecutive``); drop sessions shorter than
    ``min_session_length``, items with fewer than ``min_item_support`` clicks, short sessions again
    (repeated until nothing changes if ``iterate_until_stable``); hold out the last ``test_days`` as
    test (by each session's last click, or its first with ``split_by: session_start``); drop test
    clicks on items not in train_full, then short test sessions; split train_full the same way with
    ``valid_days`` into train_tr/train_valid.
    """

    min_session_length: int = 2
    min_item_support: int = 5
    iterate_until_stable: bool = False
    dedup: str = "none"
    split_by: str = "session_end"
    test_days: float = 1.0
    valid_days: float = 1.0

    def __post_init__(self) -> None:
        if self.dedup not in DEDUP:
            raise PrepareError(f"dataset.protocol.dedup must be one of {DEDUP}, got {self.dedup!r}")
        if self.split_by not in SPLIT_BY:
            raise PrepareError(f"dataset.protocol.split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        for key in ("min_session_length", "min_item_support"):
            if getattr(self, key) < 1:
                raise PrepareError(f"dataset.protocol.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("test_days", "valid_days"):
            if not getattr(self, key) > 0:
                raise PrepareError(
                    f"dataset.protocol.{key} must be a positive number of days, not {getattr(self, key)}"
                )

    def settings(self) -> dict:
        return asdict(self)

    def apply(self, events: Events) -> Prepared:
        """Clean ``events``, then split off test from the data's end and train_valid from train_full's end."""
        events, steps = clean(
            events, self.dedup, self.min_session_length, self.min_item_support, self.iterate_until_stable
        )
        test_cut = day_cut(float(events.time.max()), self.test_days)
        train_full, test = self._split(events, test_cut, ("train_full", "test"))
        # A session_start split ends train_full at the test cut (Hidasi & Czapp 2023 measure both cuts
        # from the data's end); a session_end split measures from train_full's own last click.
        valid_end = test_cut if self.split_by == "session_start" else float(train_full.time.max())
        valid_cut = day_cut(valid_end, self.valid_days)
        train_tr, train_valid = self._split(train_full, valid_cut, ("train_tr", "train_valid"))
        splits = {"train_full": train_full, "test": test, "train_tr": train_tr, "train_valid": train_valid}
        return Prepared(splits, steps)

    def _split(self, events: Events, cut: float, names: tuple[str, str]) -> tuple[Events, Events]:
        train, held_out = split_last_days(events, cut, self.split_by, self.min_session_length, names)
        return train, drop_unseen(held_out, train, self.min_session_length, names[1])
