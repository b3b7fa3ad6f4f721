"""Runs SQLAlchemy's own test suite (its source release, unpacked by the integration test)
against one PostgreSQL endpoint and writes each test's outcome as JSON, in the form
django_suite.py writes.

    sqlalchemy_suite.py SOURCE_DIR PORT NAME OUT.json [PATH ...]

The database NAME is made afresh (UTF8, from template0, with the schemas test_schema and
test_schema_2 the suite expects) through the endpoint itself; PATH are test files or folders
under SOURCE_DIR (default: test/dialect/postgresql).
"""

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import psycopg


def main():
    source, port, name, out = sys.argv[1:5]
    paths = sys.argv[5:] or ["test/dialect/postgresql"]
    base = f"host=127.0.0.1 port={port} user=postgres"
    with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name} ENCODING 'utf8' TEMPLATE template0")
    with psycopg.connect(f"{base} dbname={name}", autocommit=True) as c:
        c.execute("CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2")
    junit = out + ".xml"
    cmd = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}",
        f"--dburi=postgresql+psycopg://postgres@127.0.0.1:{port}/{name}", *paths,
    ]
    t0 = time.monotonic()
    run = subprocess.run(cmd, cwd=source, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - t0
    outcomes = {}
    if os.path.exists(junit):
        for case in ET.parse(junit).getroot().iter("testcase"):
            key = f"{case.get('classname')}::{case.get('name')}"
            kinds = {child.tag for child in case}
            if "failure" in kinds:
                outcomes[key] = "FAIL"
            elif "error" in kinds:
                outcomes[key] = "ERROR"
            elif "skipped" in kinds:
                outcomes[key] = "skipped"
            else:
                outcomes[key] = "ok"
    summary = [line for line in run.stdout.splitlines() if " in " in line and ("passed" in line or "failed" in line)][-1:]
    with open(out, "w") as f:
        json.dump({"seconds": seconds, "returncode": run.returncode, "summary": summary, "tests": outcomes}, f)
    with open(out + ".log", "w") as f:
        f.write(run.stdout)
    with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
    print(f"{name}: {len(outcomes)} tests in {seconds:.1f} s, {' / '.join(summary)}")
    if not outcomes:
        print(run.stdout[-5000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
