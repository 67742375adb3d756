#!/usr/bin/env python3
"""Builds dist/uscmdrelay.pyz, the one file sysadmins copy to their servers.

    python3 build_zipapp.py           write dist/uscmdrelay.pyz
    python3 build_zipapp.py --check   exit 1 if the committed file differs from a fresh build

The build is reproducible: entries in sorted order, a fixed timestamp and fixed modes, and
no compression (zlib's output may differ between zlib versions; stored entries cannot).
Building twice, on any machine, gives the same bytes.
"""

import argparse
import io
import os
import stat
import sys
import zipfile

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.join(ROOT, "src", "uscmdrelay")
TARGET = os.path.join(ROOT, "dist", "uscmdrelay.pyz")
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
TARGET_MODE = 0o755


def package_files():
    """Returns the package's source files, relative to src/, in sorted order."""
    names = []
    for directory, subdirs, files in os.walk(PACKAGE_DIR):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                names.append(os.path.relpath(path, os.path.dirname(PACKAGE_DIR)))
    return sorted(name.replace(os.sep, "/") for name in names)


def build():
    """Returns the bytes of the zipapp."""
    entries = [(name, _read(os.path.join(ROOT, "src", name))) for name in package_files()]
    # The archive's own __main__.py is the package's: it checks the Python version first.
    entries.append(("__main__.py", _read(os.path.join(PACKAGE_DIR, "__main__.py"))))
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, FIXED_DATE_TIME)
            info.external_attr = (stat.S_IFREG | FILE_MODE) << 16
            info.create_system = 3  # Unix, whatever machine builds it
            archive.writestr(info, data)
    return buffer.getvalue()


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def write(data, path=TARGET):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, TARGET_MODE)
    os.replace(temporary, path)


def check(data, path=TARGET):
    """Returns None when `path` holds exactly `data`, else a message saying what differs."""
    try:
        current = _read(path)
    except OSError as error:
        return "%s: cannot read it: %s" % (path, error.strerror)
    if current != data:
        return ("%s is stale: it differs from a fresh build of src/; run "
                "'python3 build_zipapp.py' and commit the result" % os.path.relpath(path))
    if os.stat(path).st_mode & 0o111 != 0o111:
        return "%s is not executable; run 'python3 build_zipapp.py'" % path
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build dist/uscmdrelay.pyz.")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if dist/uscmdrelay.pyz is not a fresh "
                             "build")
    args = parser.parse_args(argv)
    data = build()
    if args.check:
        problem = check(data)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print("%s is fresh (%d bytes)" % (os.path.relpath(TARGET), len(data)))
        return 0
    write(data)
    print("wrote %s (%d bytes)" % (os.path.relpath(TARGET), len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
