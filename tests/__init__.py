"""synthloop's tests. A regular package, so `from tests.conftest import ...` finds these files even where a
dependency installs a top-level `tests` package of its own (latex2sympy2, pulled in by lmms-eval, does)."""
