"""User errors of the command line: one line on stderr, no traceback.

Every ``erquant`` sub-command reports a user error as one line
``error: <file>: <problem>``. A :class:`UsageError` is a mistake found before
any work (a bad option, an output folder that cannot be written, a missing or
invalid parameter file) and makes :func:`erquant.cli.main` exit with status 2;
inputs that fail while the others are still processed give status 1.

The helpers here check what a command needs before it starts:
:func:`check_output_dir`, :func:`load_params_file`, :func:`check_input_file`,
:func:`get_backend_or_usage`; :func:`run_command` runs a sub-command
and turns its errors into that line.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = [
    "UsageError",
    "check_input_file",
    "check_output_dir",
    "file_message",
    "get_backend_or_usage",
    "load_params_file",
    "run_command",
]


class UsageError(Exception):
    """A user error found before any work; the CLI prints ``error: <message>`` and exits 2.

    The message should start with the file, folder or option it is about, e.g.
    ``"out.txt: exists and is a file, not a folder"``.

    Examples
    --------
    >>> str(UsageError("p.toml: parameter file not found"))
    'p.toml: parameter file not found'
    """


def file_message(path: str | Path, exc: BaseException | str) -> str:
    """``"<path>: <problem>"`` unless the problem already names ``path``.

    Parameters
    ----------
    path : str or Path
        The file the problem is about.
    exc : exception or str
        The problem.

    Returns
    -------
    str
        One line (only the first line of a multi-line message is kept).

    Examples
    --------
    >>> file_message("a.tif", ValueError("image is constant"))
    'a.tif: image is constant'
    >>> file_message("a.tif", "cannot read image file 'a.tif': truncated")
    "cannot read image file 'a.tif': truncated"
    """
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if str(path) in msg else f"{path}: {msg}"


def _file_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) that is not a folder."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def check_output_dir(path: str | Path, *, option: str = "-o") -> Path:
    """Create the output folder ``path`` if needed and check that files can be written in it.

    Writability is checked by creating and deleting a probe file (permission
    bits alone are wrong for root, ACLs and read-only mounts).

    Parameters
    ----------
    path : str or Path
        The output folder.
    option : str
        The command-line option that named it, used in the messages.

    Returns
    -------
    Path
        ``path``, now an existing writable folder.

    Raises
    ------
    UsageError
        When ``path`` or one of its parents is a file, or the folder cannot be
        created or written; the message names the path.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> check_output_dir(os.path.join(d, "a", "b")).is_dir()
    True
    >>> open(os.path.join(d, "f.txt"), "w").close()
    >>> check_output_dir(os.path.join(d, "f.txt"))
    Traceback (most recent call last):
    ...
    erquant._cli_errors.UsageError: ...f.txt: exists and is a file, not a folder (-o needs a folder)
    """
    path = Path(path)
    blocker = _file_ancestor(path)
    if blocker == path:
        raise UsageError(f"{path}: exists and is a file, not a folder ({option} needs a folder)")
    if blocker is not None:
        raise UsageError(f"{path}: cannot create the output folder: {blocker} is a file, "
                         "not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{path}: cannot create the output folder: "
                         f"{exc.strerror or exc}") from exc
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".erquant-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{path}: output folder is not writable: {exc.strerror or exc}") from exc
    return path


def check_input_file(path: str | Path, *, what: str = "image file") -> Path:
    """Check that ``path`` exists and is a file (not a folder).

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is, for the message (``"image file"``, ``"parameter file"``).

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        ``"<path>: <what> not found"``.
    IsADirectoryError
        ``"<path>: is a folder, not a <what>"``.

    Examples
    --------
    >>> import tempfile
    >>> check_input_file(tempfile.gettempdir())
    Traceback (most recent call last):
    ...
    IsADirectoryError: ...: is a folder, not an image file
    """
    path = Path(path)
    if path.is_dir():
        article = "an" if what[:1] in "aeiou" else "a"
        raise IsADirectoryError(f"{path}: is a folder, not {article} {what}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def load_params_file(path: str | Path | None):
    """Read a TOML parameter file, or the defaults when ``path`` is None.

    Parameters
    ----------
    path : str, Path or None

    Returns
    -------
    erquant.params.Params

    Raises
    ------
    UsageError
        When the file is missing, a folder, not valid TOML, or holds an
        unknown parameter; the message names the file.

    Examples
    --------
    >>> load_params_file("no_such_params.toml")
    Traceback (most recent call last):
    ...
    erquant._cli_errors.UsageError: no_such_params.toml: parameter file not found
    """
    from erquant.params import Params

    if path is None:
        return Params()
    try:
        check_input_file(path, what="parameter file")
        return Params.from_toml(path)
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise UsageError(file_message(path, exc)) from exc


def get_backend_or_usage(name: str):
    """:func:`erquant.backend.get_backend`, with an unusable backend as a :class:`UsageError`.

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"}

    Returns
    -------
    erquant.backend.Backend

    Examples
    --------
    >>> get_backend_or_usage("numpy").name
    'numpy'
    """
    from erquant.backend import get_backend

    try:
        return get_backend(name)
    except (RuntimeError, ImportError, ValueError) as exc:
        raise UsageError(f"--backend {name}: {exc}") from exc


def run_command(func, args, *, verbose: bool = False) -> int:
    """Run a sub-command ``func(args)`` and turn errors into one line on stderr.

    Parameters
    ----------
    func : callable
        The sub-command, ``func(args) -> int | None``.
    args : argparse.Namespace
        Its parsed arguments.
    verbose : bool
        Re-raise unexpected exceptions (the full traceback of a bug) instead
        of printing one line.

    Returns
    -------
    int
        The command's status; 2 after a :class:`UsageError`, 1 after any other
        exception, 130 after Ctrl-C.

    Examples
    --------
    >>> def bad(args):
    ...     raise UsageError("x.toml: parameter file not found")
    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     rc = run_command(bad, None)
    >>> rc, err.getvalue()
    (2, 'error: x.toml: parameter file not found\\n')
    """
    import sys

    try:
        return int(func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {type(exc).__name__}: {msg} (run with -v for the traceback)",
              file=sys.stderr)
        return 1
