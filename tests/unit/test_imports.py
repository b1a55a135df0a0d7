"""What starting the `stoker` command imports: every CLI call pays for it, so the two
broker transports' libraries load only when a broker of theirs is used."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_imports_neither_sqlalchemy_nor_redis_until_a_broker_needs_one() -> None:
    probe = (
        "import sys, stoker.cli.app\n"
        "from stoker.queues.app import kombu_url\n"
        "print(sorted(m for m in ('sqlalchemy', 'redis') if m in sys.modules))\n"
        "kombu_url('sqla+sqlite:///x.db')\n"
        "print(sorted(m for m in ('sqlalchemy', 'redis') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "['sqlalchemy']"]
