"""cert_install tests (a package so its conftest is cert.conftest, not a second top-level conftest)."""
