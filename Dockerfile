# CPU server image: `spatia serve` with the geometric generator, no torch (the [server] extra only).
#   docker build -t spatia-world:cpu .      docker compose up      (compose.yaml)
# Settings come from SPATIA_* variables (below) or a TOML file (SPATIA_CONFIG); see docs/OPERATIONS.md.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/spatia
COPY pyproject.toml README.md ./
COPY spatia ./spatia
COPY world ./world
COPY model ./model
COPY server ./server
COPY client ./client
COPY proto ./proto
RUN /opt/spatia/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/spatia/bin/pip install --no-cache-dir ".[server]" \
 && /opt/spatia/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch leaked in'"

FROM python:3.11-slim-bookworm
# open3d links libGL / libEGL / libX11 / libusb at import time (it never opens a display); numba's OpenMP layer
# needs libgomp.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libegl1 libx11-6 libusb-1.0-0 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group spatia \
 && mkdir -p /data && chown spatia:spatia /data
COPY --from=build /opt/spatia /opt/spatia
ENV PATH=/opt/spatia/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_THREADING_LAYER=omp \
    NUMBA_CACHE_DIR=/data/.cache/numba \
    SPATIA_HOST=0.0.0.0 \
    SPATIA_PORT=50051 \
    SPATIA_DATA_DIR=/data \
    SPATIA_METRICS_PORT=9100 \
    SPATIA_LOG_FORMAT=json \
    SPATIA_GENERATOR=geometric
USER spatia
WORKDIR /home/spatia
# worlds, recordings and numba's compiled-kernel cache (restarts skip the JIT)
VOLUME ["/data"]
EXPOSE 50051 9100
# The gRPC health service (no token needed); the first start compiles the numba kernels (~1 min on 2 cores).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["spatia", "health", "--server", "127.0.0.1:50051", "--timeout-s", "3"]
# SIGTERM (docker stop) = graceful shutdown: running clips finish, every world is saved.
STOPSIGNAL SIGTERM
ENTRYPOINT ["spatia"]
CMD ["serve"]
