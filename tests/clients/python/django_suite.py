"""Runs Django's own test suite (its source release, unpacked by scripts/django-suite or the
integration test) against one PostgreSQL endpoint and writes each test's outcome as JSON.

    django_suite.py SOURCE_DIR PORT NAME OUT.json [LABEL ...]

SOURCE_DIR is the unpacked sdist (it has tests/runtests.py); PORT the server or pgsplit on
127.0.0.1; NAME the database name prefix (Django creates test_NAME and test_NAME_other); no
LABEL runs the whole suite. The outcome of each test is read from the runner's verbose output:
ok, FAIL, ERROR, skipped, expected failure, unexpected success.
"""

import json
import os
import re
import subprocess
import sys
import time

SETTINGS = """
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1", "PORT": {port}, "USER": "postgres", "NAME": "{name}",
        "TEST": {{"NAME": "test_{name}"}},
    }},
    "other": {{
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1", "PORT": {port}, "USER": "postgres", "NAME": "{name}_other",
        "TEST": {{"NAME": "test_{name}_other"}},
    }},
}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
"""

# "test_x (app.tests.Class.test_x) ... ok", also "... skipped 'why'" and multi-line forms
# where the outcome follows docstrings on the next line.
LINE = re.compile(r"^(\w+) \(([\w.]+)\)(?:\n.*?)?\s\.\.\.\s(ok|FAIL|ERROR|skipped|expected failure|unexpected success)", re.M | re.S)
# Errors outside a test (setUpClass, module import): "ERROR: setUpClass (app.tests.Class)".
OUTSIDE = re.compile(r"^(ERROR|FAIL): (\w+) \(([\w.]+)\)", re.M)


def main():
    source, port, name, out = sys.argv[1:5]
    labels = sys.argv[5:]
    tests = os.path.join(source, "tests")
    settings = f"test_pgsplit_{name}"
    with open(os.path.join(tests, settings + ".py"), "w") as f:
        f.write(SETTINGS.format(port=int(port), name=name))
    env = dict(os.environ, PYTHONPATH=source)
    cmd = [sys.executable, "-u", "runtests.py", f"--settings={settings}", "--parallel=1", "-v", "2", "--noinput", *labels]
    t0 = time.monotonic()
    run = subprocess.run(cmd, cwd=tests, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - t0
    text = run.stdout
    outcomes = {}
    for m in LINE.finditer(text):
        outcomes[f"{m.group(2)}"] = m.group(3)
    for m in OUTSIDE.finditer(text):
        # Python 3.11+ names the whole test id in the parentheses; setUpClass and module
        # errors name the class or module.
        where = m.group(3)
        key = where if where.endswith("." + m.group(2)) else f"{where}.{m.group(2)}"
        outcomes.setdefault(key, m.group(1))
    summary = [line for line in text.splitlines() if re.match(r"^(Ran \d+ tests|OK|FAILED)", line)]
    with open(out, "w") as f:
        json.dump({"seconds": seconds, "returncode": run.returncode, "summary": summary, "tests": outcomes}, f)
    with open(out + ".log", "w") as f:
        f.write(text)
    print(f"{name}: {len(outcomes)} tests in {seconds:.1f} s, {' / '.join(summary)}")
    if not outcomes:
        print(text[-5000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
