# The qt live flow (and cli.produce) on CPU. Used by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    QT_HOME=/var/lib/qt

# LightGBM needs the OpenMP runtime, which the slim image lacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CPU index: from PyPI the same pin pulls a multi-GB CUDA build. The later
# `pip install -e .` sees torch==2.13.0 satisfied (2.13.0+cpu) and keeps it. Own layer: cached.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY . .
RUN pip install -e .

VOLUME ["/var/lib/qt"]
CMD ["python", "-m", "bytewax.run", "dataflows.live"]
