#!/usr/bin/env python3
"""Writes the haystack text of `headwise eval` from Debian's r-cran-janeaustenr package.

The package (MIT-licensed R packaging) ships the full texts of Jane Austen's six novels, as
Project Gutenberg prepared them; the novels themselves are in the public domain (published
1811-1818). They are stored as an R lazy-load database (data/Rdata.rdx, an index, and
data/Rdata.rdb, zlib-compressed R serializations of one character vector per novel, one element
per line). This reads that format with the standard library only, joins each paragraph's lines
with single spaces (runs of spaces collapsed, as RULER collapses its essays'), removes the underscores that mark italics, and writes the novels one after another,
paragraphs separated by a blank line.

usage: make-haystack.py EXTRACTED_DEB_DIR OUT_FILE
"""

import gzip
import struct
import sys
import zlib

# The novels in publication order, by their object names in the package.
NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey",
          "persuasion"]


class Reader:
    """The subset of R's XDR serialization format (version 2 or 3) these files use."""

    def __init__(self, data):
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.data, self.pos = data, 2
        version = self.int()
        self.pos += 8  # the writer's R version and the oldest that can read it
        if version == 3:
            n = self.int()  # the native encoding's name
            self.pos += n
        self.refs = []

    def int(self):
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.data[self.pos:self.pos + n].decode("utf-8")
            self.pos += n
            return s
        if kind == 1:  # SYMSXP
            sym = self.item()
            self.refs.append(sym)
            return sym
        if kind == 255:  # REFSXP
            return self.refs[(flags >> 8) - 1]
        if kind == 2:  # LISTSXP (pairlist): attributes
            out = {}
            while True:
                attr = self.item() if has_attr else None
                tag = self.item() if has_tag else None
                out[tag] = self.item()
                nxt = self.int()
                if nxt & 0xFF == 254:
                    return out
                has_attr, has_tag = nxt & (1 << 9), nxt & (1 << 10)
                del attr
        if kind in (10, 13, 16, 19):  # LGLSXP, INTSXP, STRSXP, VECSXP
            n = self.int()
            if kind in (10, 13):
                vals = list(struct.unpack_from(">%di" % n, self.data, self.pos))
                self.pos += 4 * n
            else:
                vals = [self.item() for _ in range(n)]
            attrs = self.item() if has_attr else None
            if attrs and "names" in attrs:
                return dict(zip(attrs["names"], vals))
            return vals
        raise ValueError(f"unsupported R object type {kind} at byte {self.pos - 4}")


def novels(data_dir):
    index = Reader(gzip.decompress(open(f"{data_dir}/Rdata.rdx", "rb").read())).item()
    rdb = open(f"{data_dir}/Rdata.rdb", "rb").read()
    for name in NOVELS:
        offset, length = index["variables"][name]
        blob = rdb[offset:offset + length]
        (size,) = struct.unpack(">I", blob[:4])
        raw = zlib.decompress(blob[4:])
        if len(raw) != size:
            raise ValueError(f"{name}: {len(raw)} bytes inflated, the index says {size}")
        yield Reader(raw).item()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data_dir = sys.argv[1].rstrip("/") + "/usr/lib/R/site-library/janeaustenr/data"
    paragraphs = []
    for lines in novels(data_dir):
        current = []
        for line in lines + [""]:
            line = (line or "").strip().replace("_", "")
            if line:
                current.append(line)
            elif current:
                paragraphs.append(" ".join(" ".join(current).split()))
                current = []
    with open(sys.argv[2], "w", encoding="utf-8", newline="\n") as out:
        out.write("\n\n".join(paragraphs) + "\n")


if __name__ == "__main__":
    main()
