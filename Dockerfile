# syntax=docker/dockerfile:1
# The Tidings application image: one image for `tidings migrate`, `tidings worker` and
# `tidings gateway` (see compose.yaml and docs/docker.md). Runtime dependencies only.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The source is bind-mounted for the install only (read-write, so that setuptools can write its
# build/ and *.egg-info/ there), so none of it stays in the image: only the installed package.
# The extras ([dev]) are not installed. Every dependency ships manylinux wheels for CPython 3.11
# on x86_64, so no compiler is needed there.
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install --no-cache-dir /src

# An unprivileged user. Its home is the working directory, where the Faust worker keeps its
# data directory (`<app id>-data`), and under it the default TIDINGS_STATE_DIR.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin tidings
USER tidings
WORKDIR /home/tidings

EXPOSE 8787

# `docker run IMAGE migrate`, `... gateway`, `... worker`, `... token alice`. Installed from a
# wheel, the console script goes straight to the CLI (the .venv bootstrap is for checkouts).
ENTRYPOINT ["tidings"]
CMD ["--help"]
