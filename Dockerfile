# cachepi: a caching proxy for Python package indexes.
#   docker build -t cachepi .
#   docker run -p 5000:5000 -v cachepi:/var/cache/cachepi cachepi
# Arguments replace the default command: `docker run cachepi serve --workers 4`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the wheel needs: no tests, no dev extras, no build leftovers in the image.
COPY pyproject.toml README.md /tmp/cachepi/
COPY src /tmp/cachepi/src
# The cluster extra (obstore, redis; a few MB): the same image runs alone or as a node of
# compose.cluster.yaml (CACHEPI_STORAGE=s3://..., CACHEPI_REDIS_URL).
RUN pip install --no-cache-dir "/tmp/cachepi[cluster]" \
    && rm -rf /tmp/cachepi

# /var/cache/proxpi too: a proxpi deployment's volume and PROXPI_CACHE_DIR keep working, and
# a volume mounted on a directory of the image starts with its owner (ours, not root).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/cachepi cachepi \
    && mkdir -p /var/cache/cachepi /var/cache/proxpi \
    && chown cachepi:cachepi /var/cache/cachepi /var/cache/proxpi

# Defaults as PROXPI_* (the weakest variables): whatever a deployment sets, PROXPI_* or
# CACHEPI_*, wins over them.
ENV PROXPI_CACHE_DIR=/var/cache/cachepi \
    PROXPI_HOST=0.0.0.0

USER cachepi
WORKDIR /home/cachepi
VOLUME /var/cache/cachepi
EXPOSE 5000

# /health answers 200 whenever the server runs (an upstream outage is "degraded", not down).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

ENTRYPOINT ["cachepi"]
CMD ["serve"]
