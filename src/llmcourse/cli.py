def main(argv=None):  # placeholder, replaced below
    raise SystemExit("not ready")
