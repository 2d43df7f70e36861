"""`python -m vitfast` and the `vitfast` console script."""

from vitfast.cli import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
