"""Nothing lost: the rules every command that writes follows, written once.

- **A run folder has one owner kind** (:data:`KINDS`): a pretraining run, a fine-tuning run,
  a scaling sweep, token shards or a model folder (what ``triform convert`` writes). The
  kind is recorded in ``.triform.json`` by the commands that run long, and recognised by the
  files of the folder otherwise (:func:`folder_kind`). A command never writes into a folder
  of another kind, and one writer at a time holds a folder (:class:`RunLock`).
- **Results are replaced only by better-founded results.** A run started in a folder that
  holds an earlier run's results is refused unless it resumes that run or is told to
  ``overwrite`` it; then the earlier run is moved aside into ``previous-<time>/``. Its
  results (a fine-tune's ``best/``, ``final/``, ``results.json``) stay where they are until
  the new run writes its own (:meth:`RunFolder.set_aside_results`), so a new run that fails
  leaves the earlier model in place.
- **No output is an input** (:func:`check_output_file`): an output path that is (by path or
  by inode) one of the command's inputs is refused; an existing output file is replaced
  only with ``overwrite``, and then atomically (:func:`replacing`); a file that belongs to
  a run or model folder is never replaced by another command.
- **Append-only files are repaired before appending** (:func:`read_jsonl_records`,
  :func:`repair_jsonl`): a torn last line (a process killed mid-write) is dropped, with one
  warning; a malformed line elsewhere is an error naming the file and line.
- **Temporaries are cleaned up on start**: :func:`remove_stale_files` in a folder this
  process holds the lock of, :func:`remove_dead_temporaries` elsewhere (only those of
  processes that no longer exist).

This module sits at the bottom of the package (the standard library and
:mod:`triform.errors` only), so that every layer that writes can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triform.errors import TriformError, warn

KIND_FILE = ".triform.json"
LOCK_FILE = ".lock"
TEMPORARY = (".tmp-", ".old-")  # prefixes of files and folders being written
PREVIOUS = "previous-"  # previous-<time>/: an earlier run moved aside
PENDING = ".pending.json"  # in previous-<time>/: the earlier results still to be moved in
CHECKPOINTS = "checkpoints"
STEP_STATE = "trainer_state.json"  # a checkpoint folder is complete once it has this file


@dataclass(frozen=True)
class Kind:
    """One kind of folder a command writes.

    ``markers``: files whose presence says a folder is of this kind (for folders written
    before the kind was recorded). ``state``: what a run writes as it goes, moved aside at
    the start of an ``overwrite`` run. ``results``: what a finished run leaves, moved aside
    only once the new run writes its own. ``owns_all``: every file of the folder belongs to
    it (a model or shard folder), else only the names above.
    """

    name: str
    what: str
    markers: tuple[str, ...]
    state: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    owns_all: bool = False

    def owned(self) -> set[str]:
        return {*self.markers, *self.state, *self.results, KIND_FILE, LOCK_FILE}


_RUN_STATE = (
    "checkpoints",
    "metrics.jsonl",
    "commands.jsonl",
    "tensorboard",
    "wandb",
    "loss_curve.png",
)

# In the order folders are recognised: a fine-tuning run also has checkpoints/.
KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "finetune",
            "a fine-tuning run",
            markers=("finetune_config.json", "results.json"),
            state=(*_RUN_STATE, "finetune_config.json"),
            results=("best", "final", "results.json", "predictions.jsonl"),
        ),
        Kind(
            "sweep",
            "a scaling sweep",
            markers=("results.jsonl", "points"),
            state=("results.jsonl", "points", "tokenizer.json", "data", "fit.json"),
        ),
        Kind(
            "pretrain",
            "a pretraining run",
            markers=("run.json", "parts.json", "checkpoints"),
            state=(*_RUN_STATE, "run.json", "model.json", "parts.json", "tokenizer.json", "data"),
        ),
        Kind("shards", "token shards", markers=("train.bin",), owns_all=True),
        Kind(
            "model",
            "a model folder",
            markers=(
                "finetune.json",
                "model.safetensors",
                "model.safetensors.index.json",
                "pytorch_model.bin",
            ),  # fmt: skip
            owns_all=True,
        ),
    )
}


def folder_kind(folder: str | Path) -> str | None:
    """The kind of ``folder`` (a key of :data:`KINDS`), or ``None`` for a folder that holds
    nothing of triform's (or does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    record = folder / KIND_FILE
    if record.is_file():
        try:
            kind = json.loads(record.read_text(encoding="utf-8")).get("kind")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            kind = None
        if kind in KINDS:
            return kind
    for kind in KINDS.values():
        if any((folder / marker).exists() for marker in kind.markers):
            return kind.name
    return None


def describe(folder: str | Path) -> str:
    """``runs/x (a pretraining run)``: a folder and what it holds."""
    kind = folder_kind(folder)
    return f"{folder} ({KINDS[kind].what})" if kind else str(folder)


def _has_checkpoint(folder: Path) -> bool:
    root = folder / CHECKPOINTS
    return root.is_dir() and any(
        child.name.startswith("step-") and (child / STEP_STATE).is_file()
        for child in root.iterdir()
    )


def earlier_results(folder: str | Path, kind: str) -> list[str]:
    """What an earlier run of ``kind`` left in ``folder`` that a new run would replace:
    its results and checkpoints (names, for messages); ``[]`` when there is none."""
    folder = Path(folder)
    found = [name for name in KINDS[kind].results if (folder / name).exists()]
    if _has_checkpoint(folder):
        found.append(CHECKPOINTS)
    return [f"{name}/" if (folder / name).is_dir() else name for name in found]


def check_run_folder(
    folder: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path | None] = (),
    sources: Iterable[str | Path | None] = (),
) -> None:
    """Refuse, before any work, to write a run of ``kind`` into ``folder`` when it holds
    another kind, or (neither ``resume`` nor ``overwrite``) an earlier run's results; when
    one of the run's ``inputs`` lies in ``folder`` where the run writes; or when ``folder``
    is or lies inside one of its ``sources`` (corpus folders, which would read the run's
    files as text the next time)."""
    folder = Path(folder)
    what = KINDS[kind].what
    if folder.exists() and not folder.is_dir():
        raise TriformError(f"{folder} is a file, not a folder for {what}")
    _check_apart(folder, kind, inputs, sources)
    check_writable(folder, str(folder))
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise TriformError(f"{folder} holds {KINDS[found].what}, not {what}: choose another folder")
    if resume:
        if found is None:
            raise TriformError(f"cannot resume {folder}: it holds no run")
        return
    earlier = earlier_results(folder, kind)
    if earlier and not overwrite:
        raise TriformError(
            f"{folder} already holds {what} ({', '.join(earlier)}): resume it (--resume), "
            f"move it aside into {folder}/{PREVIOUS}<time>/ (--overwrite), or choose "
            "another folder"
        )


def _check_apart(
    folder: Path,
    kind: str,
    inputs: Iterable[str | Path | None],
    sources: Iterable[str | Path | None],
) -> None:
    target = folder.resolve()
    owned = KINDS[kind].owned()
    for source in sources:
        if source is None or not Path(source).is_dir():
            continue
        if target.is_relative_to(Path(source).resolve()):
            raise TriformError(
                f"{folder} lies in the corpus folder {source}: write the run elsewhere"
            )
    for source in [*inputs, *sources]:
        if source is None or str(source) in ("", "-") or not Path(source).exists():
            continue
        path = Path(source).resolve()
        inside = path != target and path.is_relative_to(target)
        if inside and path.relative_to(target).parts[0] in owned:
            raise TriformError(
                f"{source} is an input of the run and lies where it writes in {folder}: "
                "move it, or write the run elsewhere"
            )


class RunLock:
    """An exclusive lock on a run folder for as long as a run writes to it.

    ``fcntl.flock`` on ``<run>/.lock``, which holds the owner's pid: a second run on the
    folder is refused naming that pid, and the lock goes away with its process however it
    ends (even ``kill -9``), so a stale lock file never blocks anything. Where ``fcntl``
    does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise TriformError(
                f"run folder {self.path.parent} is in use by another run (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class RunFolder:
    """A run folder claimed by :func:`claim_run_folder`: locked until :meth:`release` (or
    the end of a ``with`` block), with the earlier run's results still to be moved aside
    (``pending``) before the new run writes its own."""

    path: Path
    kind: str
    lock: RunLock | None = None  # None: the caller holds the folder's lock
    pending: Path | None = None

    def set_aside_results(self) -> None:
        """Move the earlier run's results into its ``previous-<time>/`` folder: call right
        before the new run writes its first result. A no-op when there is none."""
        if self.pending is None:
            return
        moved = []
        for name in KINDS[self.kind].results:
            if (self.path / name).exists():
                os.replace(self.path / name, self.pending / name)
                moved.append(name)
        (self.pending / PENDING).unlink(missing_ok=True)
        if moved:
            print(f"moved the earlier {', '.join(moved)} to {self.pending}")
        self.pending = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_run_folder(
    folder: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    sources: Iterable[str | Path | None] = (),
) -> RunFolder:
    """Lock ``folder`` for a run of ``kind`` and get it ready (:func:`prepare_run_folder`),
    or raise; the lock is held until :meth:`RunFolder.release` or the end of a ``with``."""
    folder = Path(folder)
    sources = list(sources)
    check_run_folder(folder, kind, overwrite=overwrite, resume=resume, sources=sources)
    lock = RunLock(folder).acquire()
    try:
        ready = prepare_run_folder(
            folder, kind, overwrite=overwrite, resume=resume, sources=sources
        )
    except BaseException:
        lock.release()
        raise
    ready.lock = lock
    return ready


def prepare_run_folder(
    folder: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    sources: Iterable[str | Path | None] = (),
) -> RunFolder:
    """Get ``folder``, whose lock the caller holds, ready for a run of ``kind``, or raise.

    Refuses what :func:`check_run_folder` refuses (checked again under the lock); removes
    what killed runs left half-written (:func:`remove_stale_files`); records the kind. With
    ``overwrite`` and an earlier run there, the earlier run's state (checkpoints, metrics,
    config) moves into a new ``previous-<time>/`` at once, and its results follow when
    :meth:`RunFolder.set_aside_results` is called; a resumed run finishes such a move.
    """
    folder = Path(folder)
    check_run_folder(folder, kind, overwrite=overwrite, resume=resume, sources=sources)
    folder.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_files(folder)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        print(f"removed {len(removed)} half-written file(s) of a killed run: {names}")
    pending = _pending_aside(folder)
    if overwrite and not resume and earlier_results(folder, kind):
        pending = _move_aside(folder, KINDS[kind])
    record = folder / KIND_FILE
    if not record.is_file():
        record.write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    return RunFolder(folder, kind, None, pending)


def _pending_aside(folder: Path) -> Path | None:
    """The ``previous-*`` folder still waiting for the results of the run it holds."""
    waiting = sorted(p.parent for p in folder.glob(f"{PREVIOUS}*/{PENDING}"))
    return waiting[-1] if waiting else None


def set_aside(folder: str | Path, names: Iterable[str]) -> tuple[Path, list[str]]:
    """Move the entries ``names`` of ``folder`` (those that exist) into a new
    ``folder/previous-<time>/``; returns that folder and the names moved."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = folder / f"{PREVIOUS}{stamp}"
    count = 1
    while aside.exists():
        count += 1
        aside = folder / f"{PREVIOUS}{stamp}-{count}"
    aside.mkdir()
    moved = []
    for name in names:
        if (folder / name).exists():
            os.replace(folder / name, aside / name)
            moved.append(name)
    return aside, moved


def _move_aside(folder: Path, kind: Kind) -> Path | None:
    """Move an earlier run's state into a new ``previous-<time>/``; returns that folder
    when results remain to be moved there (see :meth:`RunFolder.set_aside_results`)."""
    aside, moved = set_aside(folder, [name for name in kind.state if name not in kind.results])
    results = [name for name in kind.results if (folder / name).exists()]
    if results:  # recorded on disk, so that a resumed run finishes the move
        (aside / PENDING).write_text(json.dumps({"results": results}) + "\n", encoding="utf-8")
    shown = moved + [f"{name} (once this run writes its own)" for name in results]
    print(f"moving the earlier run aside to {aside}: {', '.join(shown)}")
    return aside if results else None


# --------------------------------------------------------------------------------------
# Temporaries left by killed processes
# --------------------------------------------------------------------------------------


_PID = (
    re.compile(r"^\.(?:tmp|old)-(\d+)(?:-|$)"),  # .tmp-<pid>-<name>, .tmp-<pid> (shards)
    re.compile(r"^\.(?:tmp|old)-.+-(\d+)$"),  # .tmp-<name>-<pid>
    re.compile(r"^\..+\.(\d+)\.tmp$"),  # .<name>.<pid>.tmp (tokenizer files)
)


def temporary_pid(name: str) -> int | None:
    """The id of the process that writes the temporary file or folder ``name``."""
    for pattern in _PID:
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    return None


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or cannot tell: keep its files
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _restore_old(folder: Path) -> None:
    """An ``.old-<name>-<pid>`` whose ``<name>`` is missing is a folder swap that a kill
    cut short (see :func:`triform.finetune.saved.save_finetuned`): put it back."""
    for child in folder.iterdir():
        match = re.match(r"^\.old-(.+)-\d+$", child.name)
        if match and not (folder / match.group(1)).exists():
            os.replace(child, folder / match.group(1))


def remove_stale_files(run_dir: str | Path) -> list[Path]:
    """Delete what killed runs left half-written in a run folder we hold the lock of
    (temporary checkpoint and model folders, temporary weight, JSON and shard files), after
    putting back any model folder a kill left moved aside; returns what was deleted."""
    root = Path(run_dir)
    removed = []
    for folder in (root, root / CHECKPOINTS, root / "data"):
        if not folder.is_dir():
            continue
        _restore_old(folder)
        for child in folder.iterdir():
            if child.name.startswith(TEMPORARY) or (
                child.name.startswith(".") and child.name.endswith(".tmp")
            ):
                _remove(child)
                removed.append(child)
    return removed


def remove_dead_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temporaries in ``folder`` (only ``.tmp-<pid>-<name>``, the ones
    :func:`replacing` writes for the output ``name``, when given) whose writing process no
    longer exists; those of live processes are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for child in folder.iterdir():
        pid = temporary_pid(child.name)
        if pid is None or pid == os.getpid() or process_exists(pid):
            continue
        if name is not None and child.name != f".tmp-{pid}-{name}":
            continue
        _remove(child)
        removed.append(child)
    return removed


# --------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same inode when both exist (links included),
    else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def owner_of(path: str | Path) -> Path | None:
    """The run or model folder ``path`` belongs to, if any: any path in a model or shard
    folder; in a run folder, one of the run's own files (``results.json``) or any path in
    one of its own folders (``best/``, ``checkpoints/step-N/``), up to two levels down. A
    new file beside a run's own (``runs/ft/predictions-dev.jsonl``) belongs to nobody."""
    path = Path(path).resolve()
    for folder in list(path.parents)[:3]:
        kind = folder_kind(folder)
        if kind is None:
            continue
        parts = path.relative_to(folder).parts
        own = parts[0] in KINDS[kind].owned() and (len(parts) > 1 or path.exists())
        if KINDS[kind].owns_all or own:
            return folder
    return None


def check_writable(folder: Path, what: str) -> None:
    """Refuse a folder no file can be created in (a read-only file system, no permission),
    found by creating one: permission bits say nothing to root or on read-only mounts. A
    folder that does not exist yet is judged by the nearest one above it that does (which
    must be a folder)."""
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise TriformError(f"{what}: {existing} is a file, not a folder")
    folder = existing
    probe = folder / f".tmp-{os.getpid()}-probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as err:
        raise TriformError(f"{what}: not writable ({err.strerror} in {folder})") from None
    with contextlib.suppress(OSError):
        probe.unlink()


def check_output_file(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    option: str = "--out",
    create_folders: bool = False,
) -> Path:
    """The output file ``path``, if the command may write it; checked before any work.

    Refused: a folder; a file in a missing folder (unless ``create_folders``: the writer
    creates them) or in one that cannot be written; one of the command's ``inputs`` (same
    path or same inode); an existing file unless ``overwrite``; a file of a run or model
    folder (:func:`owner_of`) even then.
    """
    out = Path(path)
    where = f"{option} {out}"
    if out.is_dir():
        raise TriformError(f"{where} is a folder; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    existing = next((p for p in [parent, *parent.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise TriformError(f"{where}: {existing} is a file, not a folder")
    if existing != parent and not create_folders:
        raise TriformError(f"{where}: folder {parent} does not exist")
    for source in inputs:
        if source is not None and str(source) != "-" and same_file(out, source):
            raise TriformError(f"{where} is also an input ({source}): write the output elsewhere")
    owner = owner_of(out)
    if owner is not None:
        raise TriformError(f"{where} belongs to {describe(owner)}: write the output elsewhere")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise TriformError(f"{where} exists: add --overwrite to replace it")
    check_writable(parent, where)
    return out


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """``with replacing(out) as tmp: write(tmp)``: the file is written under a temporary
    name beside ``out`` (same suffix) and renamed over ``out`` only once complete; a
    failure leaves ``out`` as it was. Temporaries of killed writers of ``out`` are removed."""
    path = Path(path)
    remove_dead_temporaries(path.parent, path.name)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_output(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`replacing`),
    creating its folder if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; a no-op where the OS cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Append-only JSON lines
# --------------------------------------------------------------------------------------


def read_jsonl_records(path: str | Path) -> tuple[list[dict[str, Any]], int | None]:
    """The objects of a JSON-lines file triform appends to, and the byte offset of a torn
    last line (an unterminated line that is not JSON: a process killed mid-write), or
    ``None``. Any other malformed line is a :class:`TriformError` naming file and line."""
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    records: list[dict[str, Any]] = []
    offset, torn = 0, None
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if offset == len(data) and not line.endswith(b"\n"):
                torn = start
                break
            reason = getattr(err, "msg", None) or "not UTF-8"
            raise TriformError(f"{path}:{number}: malformed line ({reason})") from None
        if not isinstance(record, dict):
            raise TriformError(
                f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
            )
        records.append(record)
    return records, torn


def repair_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Get a JSON-lines file ready to be appended to (by the one process that holds it):
    a torn last line is cut off, saying so once, and a last line without its newline gets
    one. Returns the records."""
    path = Path(path)
    records, torn = read_jsonl_records(path)
    if torn is not None:
        size = path.stat().st_size
        warn(
            f"{path}: dropped its torn last line ({size - torn} bytes; a process was killed "
            "while writing it)"
        )
        os.truncate(path, torn)
    elif path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            terminated = handle.read(1) == b"\n"
        if not terminated:
            with path.open("ab") as handle:
                handle.write(b"\n")
    return records
