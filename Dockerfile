# syntax=docker/dockerfile:1.7
# Every ArchLoop image, one target each, built from the repository root:
#
#   for s in controller generator evaluator novelty trainer generator-tgi dashboard; do
#     docker build --target $s -t ghcr.io/archloop/$s:0.1.0 .
#   done
#
# The stages they share: `sources` (what every image installs), a CPU build (python slim; the base
# install, or the `ml` extra with CPU torch) and a CUDA build (uv's standalone Python 3.11 on the CUDA
# base: Ubuntu 24.04 ships 3.12), and a runtime base per family with the app user (uid 10001).
# BuildKit builds only the stages a target needs.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
ARG TGI_IMAGE=ghcr.io/huggingface/text-generation-inference:3.3.6
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.7

FROM ${UV_IMAGE} AS uv

# -- what every image installs ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS sources
WORKDIR /src
COPY pyproject.toml setup.py requirements.lock README.md ./
COPY protos protos
COPY archloop archloop
COPY services services
COPY tools tools

# -- CPU family: python slim --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
WORKDIR /src
RUN python -m venv /opt/venv
COPY --from=sources /src /src

# grpc, datasketch, numpy: the services that never touch torch
FROM cpu-build AS cpu-base-venv
RUN /opt/venv/bin/pip install --no-cache-dir -c requirements.lock .

# the `ml` extra with the CPU build of torch
FROM cpu-build AS cpu-ml-venv
RUN /opt/venv/bin/pip install --no-cache-dir -c requirements.lock \
        --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.14.1+cpu" "torchvision==0.29.1+cpu" \
 && /opt/venv/bin/pip install --no-cache-dir -c requirements.lock ".[ml]"

FROM ${PYTHON_IMAGE} AS cpu-runtime
RUN groupadd --gid 10001 archloop && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin archloop
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ARCHLOOP_HOST=0.0.0.0 ARCHLOOP_LOG_FORMAT=json

# -- CUDA family: torch 2.14.1 is a CUDA 13.0 build and brings its CUDA libraries as wheels; the base
# adds the driver hooks of the NVIDIA container toolkit. The same images run on CPU nodes. ----------
FROM ${CUDA_IMAGE} AS cuda-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
WORKDIR /src
RUN uv python install 3.11.14 && uv venv --python 3.11.14 /opt/venv
COPY --from=sources /src /src
RUN VIRTUAL_ENV=/opt/venv uv pip install --no-cache -c requirements.lock ".[ml]"

FROM ${CUDA_IMAGE} AS cuda-runtime
RUN groupadd --gid 10001 archloop && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin archloop
COPY --from=cuda-build /opt/python /opt/python
COPY --from=cuda-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ARCHLOOP_HOST=0.0.0.0 ARCHLOOP_LOG_FORMAT=json

# -- the images ----------------------------------------------------------------------------------------

# The novelty service: MinHash-LSH near-duplicate filter (CPU only, no torch).
FROM cpu-runtime AS novelty
COPY --from=cpu-base-venv /opt/venv /opt/venv
ENV ARCHLOOP_PORT=50054 ARCHLOOP_DB_PATH=/var/lib/archloop/novelty.sqlite3
USER 10001:10001
EXPOSE 50054
ENTRYPOINT ["archloop-novelty"]

# the pinned LEMUR wheel (nn-dataset==2.1.2, sha256-checked), so the setup Job builds the corpus offline
FROM cpu-ml-venv AS lemur-cache
ENV ARCHLOOP_CACHE=/opt/archloop-cache
RUN /opt/venv/bin/archloop corpus fetch

# The controller (and the `archloop` CLI: corpus build, reports, the Kubernetes setup Job). CPU torch:
# the controller never trains; the corpus build's forward check runs on CPU.
FROM cpu-runtime AS controller
COPY --from=cpu-ml-venv /opt/venv /opt/venv
COPY --from=lemur-cache /opt/archloop-cache /opt/archloop-cache
ENV ARCHLOOP_PORT=50051 ARCHLOOP_CACHE=/opt/archloop-cache ARCHLOOP_STATE_DIR=/var/lib/archloop \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["archloop-controller"]

# The web dashboard (`archloop dashboard`: Starlette + uvicorn, no torch): the base install has all it needs.
FROM cpu-runtime AS dashboard
COPY --from=cpu-base-venv /opt/venv /opt/venv
ENV ARCHLOOP_DASHBOARD_PORT=8765
USER 10001:10001
EXPOSE 8765
ENTRYPOINT ["archloop", "dashboard"]

# The generator with the local backend (transformers in-process, CPU torch): the packaged tiny model or
# any model folder mounted into the pod; it can also drive an external TGI (--backend tgi --tgi-url).
FROM cpu-runtime AS generator
COPY --from=cpu-ml-venv /opt/venv /opt/venv
ENV ARCHLOOP_PORT=50052 HF_HOME=/tmp/huggingface HF_HUB_OFFLINE=1
USER 10001:10001
EXPOSE 50052
ENTRYPOINT ["archloop-generator"]

# The evaluator: checks and trains candidate programs in its sandbox (torch on the GPU; runs under
# gVisor on Kubernetes).
FROM cuda-runtime AS evaluator
ENV ARCHLOOP_PORT=50053 ARCHLOOP_WORK_DIR=/var/lib/archloop/jobs ARCHLOOP_DATA_DIR=/data
USER 10001:10001
EXPOSE 50053
ENTRYPOINT ["archloop-evaluator"]

# The trainer: LoRA fine-tunes with peft on the GPU.
FROM cuda-runtime AS trainer
ENV ARCHLOOP_PORT=50055 ARCHLOOP_STATE_DIR=/var/lib/archloop ARCHLOOP_ARTIFACTS_DIR=/artifacts \
    HF_HOME=/tmp/huggingface HF_HUB_OFFLINE=1
USER 10001:10001
EXPOSE 50055
ENTRYPOINT ["archloop-trainer"]

# The generator for a GPU cluster: Hugging Face TGI's image with the generator beside it, in managed
# mode (--tgi-launcher text-generation-launcher): TGI loads LoRA adapters only at launch, so the
# generator restarts it with each new adapter and proves the adapter live before sampling
# (services/generator/README.md). ArchLoop gets its own Python 3.11 and venv: TGI's environment is
# untouched.
FROM ${TGI_IMAGE} AS tgi-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
WORKDIR /src
RUN uv python install 3.11.14 && uv venv --python 3.11.14 /opt/archloop-venv
COPY --from=sources /src /src
# transformers (for the chat template) from `ml`; the tgi backend talks HTTP to TGI
RUN VIRTUAL_ENV=/opt/archloop-venv uv pip install --no-cache -c requirements.lock ".[ml]"

FROM ${TGI_IMAGE} AS generator-tgi
RUN groupadd --gid 10001 archloop && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin archloop
COPY --from=tgi-build /opt/python /opt/python
COPY --from=tgi-build /opt/archloop-venv /opt/archloop-venv
ENV PYTHONUNBUFFERED=1 ARCHLOOP_HOST=0.0.0.0 ARCHLOOP_PORT=50052 ARCHLOOP_LOG_FORMAT=json \
    ARCHLOOP_BACKEND=tgi ARCHLOOP_TGI_LAUNCHER=text-generation-launcher \
    ARCHLOOP_TGI_URL=http://127.0.0.1:8080 HF_HUB_OFFLINE=1 HUGGINGFACE_HUB_CACHE=/models
USER 10001:10001
EXPOSE 50052
ENTRYPOINT ["/opt/archloop-venv/bin/archloop-generator"]
