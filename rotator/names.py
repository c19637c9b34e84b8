"""Pure: how a file-system name is shown everywhere but the file system itself.

Names come from the file system as ``surrogateescape`` text, which cannot be encoded as
UTF-8 (SQLite, JSON, logs). Everything that stores, logs or prints a name or a path uses
``escape_name``; only calls into the file system see the raw name.
"""

from __future__ import annotations


def escape_name(name: str) -> str:
    """Return a file name as printable UTF-8 text, one-to-one: ``caf\\xe9.png``.

    The file system hands names over as ``surrogateescape`` text; bytes that are not
    UTF-8 become ``\\xNN``, control and other unprintable characters ``\\xNN``/``\\uNNNN``,
    and a backslash is doubled so no two names share an escaped form. Positions, logs,
    the state and every report use this form; only the file system sees the raw name.
    """
    if name.isprintable() and "\\" not in name:
        return name  # the common case: nothing to do
    out = []
    for char in name:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == " " or char.isprintable():
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)
