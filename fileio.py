"""Files written and fetched safely: atomic writes, and a verified
download-and-unpack used by ESC-50 and WHAM! preparation alike.

* ``write_atomically`` (and ``write_json``): a reader never sees a
  half-written file.
* ``download_and_extract``: a zip archive streamed with a progress bar,
  checked (byte count, optional SHA-256, CRC-32 of every member) and moved
  into place entry by entry, the entry holding the completion marker last.
  A failed or interrupted run leaves only leftovers that the next run
  removes.

Authors: the ESC-50 interpretability recipe developers.
"""

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile

from speechbrain.utils.logger import get_logger
from tqdm import tqdm

logger = get_logger(__name__)

_CHUNK = 1 << 20
# What an interrupted download_and_extract leaves behind (removed on rerun).
PART, SCRATCH = ".download.part", ".extract-tmp"


def write_atomically(path, write_fn, mode="w"):
    """Writes ``path`` through a temporary file in the same folder, then
    renames it, so a reader never sees a half-written file.

    Arguments
    ---------
    path : str
        Destination file.
    write_fn : callable
        Called with the open temporary file object.
    mode : str
        Open mode for the temporary file ("w" or "wb").
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write_fn(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, data, indent=2):
    """Writes ``data`` as JSON to ``path``, atomically."""
    write_atomically(path, lambda f: json.dump(data, f, indent=indent))


def remove(*paths):
    """Removes the files or folders among ``paths`` that exist."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def _download(url, dest, expected_sha256=None):
    """Streams ``url`` into ``dest`` with a progress bar; checks the size
    against Content-Length and, if given, the SHA-256. Returns the hex digest."""
    sha = hashlib.sha256()
    size = 0
    with (
        urllib.request.urlopen(url, timeout=60) as response,
        open(dest, "wb") as out,
    ):
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=os.path.basename(url)
        ) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    if total is not None and size != total:
        raise IOError(
            f"Download of {url} is truncated: got {size} of {total} bytes. Run again to retry."
        )
    digest = sha.hexdigest()
    if expected_sha256 and digest != expected_sha256.lower():
        raise IOError(
            f"Checksum mismatch for {url}: SHA-256 {digest}, expected {expected_sha256}. "
            "The file is corrupt or the URL serves another archive; check the URL and the "
            "sha256 key, then run again."
        )
    return digest


def check_download_target(folder, key, what):
    """Raises FileExistsError, before anything is downloaded, unless
    ``folder`` is new or empty (leftovers of an interrupted download apart):
    unpacking never replaces a file the user put there.

    Arguments
    ---------
    folder : str
        Where the archive would be unpacked.
    key : str
        The YAML key that named ``folder``, for the message.
    what : str
        What would be downloaded, e.g. "ESC-50", for the message.
    """
    if not os.path.isdir(folder):
        return
    own = sorted(set(os.listdir(folder)) - {PART, SCRATCH})
    if own:
        shown = ", ".join(own[:5]) + (", ..." if len(own) > 5 else "")
        raise FileExistsError(
            f"{key}={folder} holds files ({shown}) but not {what}. {what} is "
            "only downloaded into a new or empty folder, so that none of "
            f"your files is replaced: point --{key} at a new or empty folder "
            f"(it is downloaded there), or at a folder that holds {what}."
        )


def download_and_extract(url, data_folder, marker, sha256=None):
    """Downloads a zip archive and unpacks it into ``data_folder`` atomically.

    The archive is verified (byte count against Content-Length, the SHA-256
    when ``sha256`` is given, and the CRC-32 of every member), unpacked into a
    scratch folder, and the folder of the archive that holds ``marker`` is moved
    into ``data_folder`` entry by entry, the entry holding ``marker`` last.
    Callers check first (``check_download_target``) that ``data_folder`` is
    new or empty; an entry that appeared meanwhile is never replaced.

    Arguments
    ---------
    url : str
        Archive URL (http(s) or file).
    data_folder : str
        Destination; created if needed.
    marker : str
        Relative path whose presence means the dataset is complete, e.g.
        ``meta/esc50.csv``.
    sha256 : str, optional
        Expected SHA-256 of the archive.
    """
    os.makedirs(data_folder, exist_ok=True)
    part = os.path.join(data_folder, PART)
    scratch = os.path.join(data_folder, SCRATCH)
    remove(part, scratch)  # leftovers of an interrupted earlier run
    logger.info(f"Downloading {url} into {data_folder}")
    try:
        try:
            digest = _download(url, part, sha256)
        except urllib.error.URLError as err:
            raise IOError(
                f"Cannot download {url} into {data_folder}: {err}. Check the URL and the network."
            ) from err
        try:
            with zipfile.ZipFile(part) as archive:
                broken = archive.testzip()
                if broken is not None:
                    raise IOError(
                        f"Archive from {url} has a corrupt member {broken} (CRC-32 mismatch)."
                    )
                archive.extractall(scratch)
        except zipfile.BadZipFile as err:
            raise IOError(
                f"Archive from {url} is not a valid zip ({err}). Run again to retry."
            ) from err
        roots = [
            root
            for root, _, _ in os.walk(scratch)
            if os.path.isfile(os.path.join(root, marker))
        ]
        if not roots:
            raise IOError(
                f"Archive from {url} has no {marker}; is the URL right?"
            )
        root = roots[0]
        top = marker.split("/")[0]
        entries = sorted(os.listdir(root), key=lambda e: e == top)
        taken = [e for e in entries if os.path.lexists(f"{data_folder}/{e}")]
        if taken:
            raise FileExistsError(
                f"{data_folder} gained {taken} during the download; nothing "
                "was unpacked. Move them away and run again."
            )
        for entry in entries:
            os.replace(f"{root}/{entry}", f"{data_folder}/{entry}")
        logger.info(f"Unpacked {url} (SHA-256 {digest}) into {data_folder}")
    finally:
        remove(part, scratch)
