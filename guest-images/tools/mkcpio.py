#!/usr/bin/env python3
"""Write a reproducible, uncompressed newc cpio archive of a staging directory.

Usage: mkcpio.py OUTPUT DIR [--nod PATH:MODE:TYPE:MAJOR:MINOR ...]

Entries are sorted by path, owned by root, with mtime 0 and sequential inode
numbers, so the same tree always gives the same bytes. Device nodes (which an
unprivileged build cannot create in DIR) are added with --nod, for example
--nod dev/console:0600:c:5:1. Parent directories of every entry are emitted
before it. Hard links are stored as independent files.
"""
import os
import stat
import sys

TRAILER = "TRAILER!!!"


class Writer:
    def __init__(self, out):
        self.out = out
        self.ino = 0x1000
        self.size = 0

    def _write(self, data):
        self.out.write(data)
        self.size += len(data)

    def _pad(self):
        if self.size % 4:
            self._write(b"\0" * (4 - self.size % 4))

    def entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = [
            self.ino if name != TRAILER else 0,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check
        ]
        self._write(b"070701" + b"".join(b"%08x" % f for f in fields))
        self._write(encoded)
        self._pad()
        self._write(data)
        self._pad()


def parse_nod(spec):
    try:
        path, mode, kind, major, minor = spec.split(":")
        kind_bits = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        return path.strip("/"), kind_bits | int(mode, 8), (int(major), int(minor))
    except (ValueError, KeyError):
        sys.exit(f"mkcpio: bad --nod {spec!r}, expected PATH:MODE:c|b:MAJOR:MINOR")


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    output, root = argv[1], argv[2]
    nods = []
    rest = argv[3:]
    while rest:
        if rest[0] != "--nod" or len(rest) < 2:
            sys.exit(f"mkcpio: unexpected argument {rest[0]!r}\n{__doc__}")
        nods.append(parse_nod(rest[1]))
        rest = rest[2:]
    if not os.path.isdir(root):
        sys.exit(f"mkcpio: {root} is not a directory")

    entries = {}  # path -> (mode, data, rdev)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = (stat.S_IFLNK | 0o777, os.readlink(full).encode(), (0, 0))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = (stat.S_IFDIR | perm, b"", (0, 0))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    entries[rel] = (stat.S_IFREG | perm, f.read(), (0, 0))
            else:
                sys.exit(f"mkcpio: unsupported file type: {full}")
    for path, mode, rdev in nods:
        entries[path] = (mode, b"", rdev)
    # Parent directories first (sorting by path components guarantees it).
    for path in list(entries):
        parent = os.path.dirname(path)
        while parent and parent not in entries:
            entries[parent] = (stat.S_IFDIR | 0o755, b"", (0, 0))
            parent = os.path.dirname(parent)

    tmp = output + ".tmp"
    with open(tmp, "wb") as out:
        w = Writer(out)
        for path in sorted(entries, key=lambda p: p.split("/")):
            mode, data, rdev = entries[path]
            w.entry(path, mode, data, rdev, nlink=2 if stat.S_ISDIR(mode) else 1)
        w.entry(TRAILER, 0, nlink=1)
        # Pad to a 512-byte boundary like GNU cpio, so archives concatenate cleanly.
        if w.size % 512:
            w._write(b"\0" * (512 - w.size % 512))
    os.replace(tmp, output)


if __name__ == "__main__":
    main(sys.argv)
