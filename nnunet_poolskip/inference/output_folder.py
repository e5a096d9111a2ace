"""``predict``'s output folder: every output in it comes from one setting, and it never touches files of others.

``predict_args.json`` records the settings (model folder, folds, checkpoint, ensemble, test-time mirroring, step
size) and every case this tool wrote there, with its files (``"cases": {case: {"files": [...], "complete": bool,
"device": ...}}``; a case is entered before its files are written and marked complete after, so an interrupted case
is known as this tool's and is predicted again). The rules, checked before any model is loaded or file written:

* a folder that is absent or empty (hidden temporaries aside) is used as it is;
* a non-empty folder without ``--continue`` or ``--overwrite`` is refused, naming what it holds;
* ``--continue`` resumes only a folder whose record has the same settings; a case counts as done when the record
  lists it complete with all the files this run writes; files named like this run's outputs that the record does
  not list are refused (e.g. ``nnUNetv2_predict`` outputs: same names, other predictions);
* ``--overwrite`` deletes what the record lists (and the record, dataset.json, plans.json it wrote), nothing else;
* in every mode, a file this run would write that the record does not list is refused: files of others are never
  replaced.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError, case_outputs
from nnunet_poolskip.utilities.atomic import write_json_atomic

RECORD_NAME = "predict_args.json"
#: Files that predict writes beside the cases, as nnU-Net's own predict does.
SHARED_FILES = ("dataset.json", "plans.json")
RECORD_FORMAT = 2
NEW, CONTINUE, OVERWRITE = "new", "continue", "overwrite"
_SHOWN = 3


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


@dataclass
class OutputFolder:
    """The output folder of one ``predict`` invocation (see the module docstring).

    Attributes:
        path: the folder.
        settings: what makes two runs' outputs the same (recorded; ``--continue`` compares them).
        mode: ``new`` (no option), ``continue`` or ``overwrite``.
        record: the folder's ``predict_args.json`` as found (None when there is none).
    """

    path: Path
    settings: Dict
    mode: str = NEW
    record: Optional[Dict] = None
    device: str = ""
    _cases: Dict[str, Dict] = field(default_factory=dict)

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_NAME

    def _entries(self) -> List[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if not p.name.startswith(".tmp"))  # our killed temporaries

    def _read_record(self) -> Optional[Dict]:
        if not self.record_file.is_file():
            return None
        try:
            record = json.loads(self.record_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PredictionInputError(f"{self.record_file} is not valid JSON ({error}): this folder's outputs "
                                       f"cannot be told apart; use a new output folder") from None
        if not isinstance(record, dict):
            raise PredictionInputError(f"{self.record_file} is not a predict record; use a new output folder")
        return record

    def own_files(self) -> List[Path]:
        """The files of the folder that this tool wrote, by its record (none without one)."""
        if self.record is None:
            return []
        files = [self.record_file] + [self.path / name for name in SHARED_FILES]
        for entry in (self.record.get("cases") or {}).values():  # plain names only: nothing outside the folder
            files += [self.path / name for name in entry.get("files", []) if Path(name).name == name]
        return files

    def plan(self, cases: Sequence[str], file_ending: str, save_probabilities: bool) -> List[str]:
        """Check the folder against the mode and return the cases to predict (all, or those not done for
        ``continue``). Writes and deletes nothing.

        Raises:
            PredictionInputError: a non-empty folder without ``--continue``/``--overwrite``; for ``continue``,
                another setting or an earlier record without its cases; any file this run would write that the
                record does not list. The message names the folder, what is there and what to do.
        """
        self.record = self._read_record()
        entries = self._entries()
        own = set(self.own_files())
        recorded_cases = (self.record or {}).get("cases")
        if self.mode == NEW and entries:
            return self._refuse_non_empty(entries, own)
        todo = list(cases)
        if self.mode == CONTINUE and self.record is not None:
            changed = [k for k in self.settings if self.record.get(k) != self.settings[k]]
            if changed:  # resuming with other settings would mix two different ensembles in one folder
                raise PredictionInputError(
                    f"{self.path} was predicted with other settings ("
                    + ", ".join(f"{k}: {self.record.get(k)!r} then, {self.settings[k]!r} now" for k in changed)
                    + "); use a new output folder, or --overwrite to replace its predictions")
        if self.record is not None and recorded_cases is None and self.mode != NEW:
            raise PredictionInputError(
                f"{self.record_file} was written by an earlier version of nnunet-poolskip predict, which did not "
                f"record its cases: which files it wrote cannot be told; use a new output folder")
        if self.mode == CONTINUE and self.record is not None:
            todo = [c for c in cases if not self._done(c, file_ending, save_probabilities)]
            self._cases = {c: dict(e) for c, e in recorded_cases.items()}  # unfinished ones stay ours until redone
        elif self.mode == CONTINUE:
            foreign = [f"{c}{file_ending}" for c in cases if (self.path / f"{c}{file_ending}").is_file()]
            if foreign:  # e.g. single-fold nnUNetv2_predict outputs: same names, other predictions
                raise PredictionInputError(
                    f"{self.path} holds predictions ({_shown(foreign)}) but no {RECORD_NAME}, so they were not "
                    f"written by nnunet-poolskip predict (nnUNetv2_predict writes the same names) and cannot be "
                    f"counted as done; use a new output folder")
        keep = set() if self.mode == OVERWRITE else {self.path / n for e in self._cases.values() for n in e["files"]}
        for path in self._would_write(todo, file_ending, save_probabilities):
            if path.exists() and path not in own and path not in keep:
                raise PredictionInputError(
                    f"{path} was not written by nnunet-poolskip predict (its {RECORD_NAME} does not list it); "
                    f"predict replaces only its own outputs, even with --overwrite: move it away or use a new "
                    f"output folder")
        return todo

    def _refuse_non_empty(self, entries: List[Path], own: set) -> List[str]:
        recorded = (self.record or {}).get("cases") or {}
        complete = sorted(c for c, entry in recorded.items() if entry.get("complete"))
        parts = []
        if recorded:
            unfinished = len(recorded) - len(complete)
            parts.append(f"{len(complete)} case(s) predicted by nnunet-poolskip predict (folds "
                         f"{self.record.get('folds')}; {_shown(complete) or 'none'}"
                         + (f"; {unfinished} unfinished" if unfinished else "") + ")")
        others = [p.name for p in entries if p not in own]
        if others:
            parts.append(f"{len(others)} other file(s) ({_shown(others)})")
        if not parts:
            parts.append(f"{_shown([p.name for p in entries])}")
        raise PredictionInputError(
            f"-o/--output {self.path} is not empty: it holds {' and '.join(parts)}. Use --continue to resume a "
            f"run with the same settings, --overwrite to replace what nnunet-poolskip predict wrote there (other "
            f"files are kept), or a new output folder")

    def _done(self, case: str, file_ending: str, save_probabilities: bool) -> bool:
        entry = ((self.record or {}).get("cases") or {}).get(case)
        if not entry or not entry.get("complete"):
            return False
        needed = case_outputs(self.path, case, file_ending, save_probabilities)
        return all(p.name in entry.get("files", []) and p.is_file() for p in needed)

    def _would_write(self, cases: Sequence[str], file_ending: str, save_probabilities: bool) -> List[Path]:
        files = [self.record_file] + [self.path / name for name in SHARED_FILES]
        for case in cases:
            files += case_outputs(self.path, case, file_ending, save_probabilities)
        return files

    def start(self, shared: Mapping[str, dict], device: str) -> None:
        """Before the first case is written: with ``overwrite``, delete what the record lists; write the shared
        files (``dataset.json``, ``plans.json``: name -> content) and the record (done cases kept)."""
        if self.mode == OVERWRITE:
            for path in self.own_files():
                path.unlink(missing_ok=True)
            self._cases = {}
        self.path.mkdir(parents=True, exist_ok=True)
        for name, content in shared.items():
            write_json_atomic(content, self.path / name)
        self.device = device
        self._save()

    def case_started(self, case: str, files: Sequence[Path]) -> None:
        """Enter ``case`` (incomplete) with the files about to be written: its files are this tool's from now."""
        self._cases[case] = {"files": sorted(Path(f).name for f in files), "complete": False, "device": self.device}
        self._save()

    def case_done(self, case: str) -> None:
        self._cases[case]["complete"] = True
        self._save()

    def _save(self) -> None:
        write_json_atomic({"format": RECORD_FORMAT, **self.settings, "device": self.device,
                           "cases": dict(sorted(self._cases.items()))}, self.record_file)


def output_mode(continue_prediction: bool, overwrite: bool) -> str:
    """The mode of :class:`OutputFolder` for predict's options."""
    if continue_prediction and overwrite:
        raise PredictionInputError("--continue and --overwrite exclude each other")
    return CONTINUE if continue_prediction else OVERWRITE if overwrite else NEW
