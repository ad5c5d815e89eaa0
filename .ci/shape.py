#!/usr/bin/env python3
"""The one shape of every service crate (ARCHITECTURE.md, "Service shape"), checked:

1. `econsult_proto` and `tonic` appear only in a service crate's `grpc.rs` (or `grpc/`) and
   `lib.rs`: commands, queries and the store know domain types only; and the adapter holds no
   SQL (`sqlx` does not appear in it).
2. No `.replace(` on SQL text anywhere under `services/`: a statement is a complete literal, or
   built with a typed builder (`sqlx::QueryBuilder`).
3. No non-test source file of 900 lines or more.

Exits 1 with one line per finding. Usage: `python3 .ci/shape.py` from the repository root.
"""
import pathlib
import re
import sys

SERVICE_CRATES = ["booking", "consultation", "signalling", "stats"]
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WHERE|JOIN|VALUES)\b")
FORBIDDEN = re.compile(r"\b(econsult_proto|tonic)\b")
MAX_LINES = 900


def strip_tests(text):
    """The file without its `#[cfg(test)] mod tests { ... }` (by convention the file's tail)."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests", text, re.M)
    return text[: m.start()] if m else text


def code_lines(text):
    """Lines with `//` comments removed (doc comments may name the proto)."""
    return [re.sub(r"//.*$", "", line) for line in text.splitlines()]


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    findings = []
    for crate in SERVICE_CRATES:
        src = root / "services" / crate / "src"
        for path in sorted(src.rglob("*.rs")):
            rel = path.relative_to(src)
            adapter = rel.parts[0] == "grpc" or (rel.name == "grpc.rs" and len(rel.parts) == 1)
            if adapter:
                for n, line in enumerate(code_lines(strip_tests(path.read_text())), 1):
                    if re.search(r"\bsqlx\b", line):
                        findings.append(
                            f"{path.relative_to(root)}:{n}: SQL in the adapter: {line.strip()}"
                        )
                continue
            if rel.name == "lib.rs" and len(rel.parts) == 1:
                continue
            for n, line in enumerate(code_lines(strip_tests(path.read_text())), 1):
                if FORBIDDEN.search(line):
                    findings.append(
                        f"{path.relative_to(root)}:{n}: proto/tonic outside grpc.rs: {line.strip()}"
                    )
    for path in sorted((root / "services").rglob("*.rs")):
        text = strip_tests(path.read_text())
        if "/tests/" in str(path) or "/examples/" in str(path) or "/benches/" in str(path):
            continue
        lines = code_lines(text)
        if len(text.splitlines()) >= MAX_LINES:
            findings.append(f"{path.relative_to(root)}: {len(text.splitlines())} lines (limit {MAX_LINES})")
        for n, line in enumerate(lines, 1):
            if ".replace(" not in line:
                continue
            receiver = line.split(".replace(")[0]
            window = "\n".join(lines[max(0, n - 4) : n + 2])
            if (
                SQL_WORDS.search(window)
                or re.search(r"\b[A-Z][A-Z0-9_]{2,}\b", receiver)
                or re.search(r"\b(sql|query|stmt|statement)\w*\b", receiver)
            ):
                findings.append(f"{path.relative_to(root)}:{n}: .replace( on SQL text: {line.strip()}")
    for f in findings:
        print(f)
    if findings:
        print(f"service shape: {len(findings)} finding(s)", file=sys.stderr)
        return 1
    print("service shape: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
