"""What only the tests use, on top of the shared harness (harness/): the long/CI mode switch and
the one hypothesis profile (`modes.py`), the dstack CLI (`cli.py`), Debian's Chromium driven by
Playwright (`browser.py`), the shipped nginx front, DNS, hash ring and replicas (`front.py`), and
the rendered Kubernetes manifests (`kustomize.py`)."""
