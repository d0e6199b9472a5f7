# The msk-triton server image: NVIDIA's Triton at the release named in ../.env (TRITON_RELEASE),
# the project installed from deploy/requirements-server.lock (no resolver run, no hand-written
# dependency list), running `msk serve` - the same front door, supervisor and release
# workarounds as on every other host - as the image's non-root user. Every deployment (compose,
# each Kubernetes overlay) runs this image; none spells a tritonserver flag.
#
#   docker build -f deploy/server.Dockerfile --build-arg TRITON_RELEASE=26.09 -t msk-triton-server:26.09 .
ARG TRITON_RELEASE
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/msk
COPY deploy/requirements-server.lock ./
RUN python3 -m pip install --no-deps -r requirements-server.lock
COPY pyproject.toml README.md ./
COPY msk ./msk
COPY clients ./clients
COPY server ./server
COPY export ./export
COPY training ./training
RUN python3 -m pip install --no-deps . \
 # Our python-based OpenVINO backend pins the inference precision (the native one cannot:
 # docs/int8.md); configs select it with `runtime: "model.py"`.
 && cp server/backends/openvino/*.py /opt/tritonserver/backends/openvino/ \
 && mkdir -p /opt/tritonserver/backends/onnxruntime \
 && cp server/backends/onnxruntime/model.py /opt/tritonserver/backends/onnxruntime/model.py

# triton-server (uid 1000) is the NGC image's own non-root user.
USER triton-server
EXPOSE 8000 8001 8002
ENTRYPOINT ["msk", "serve"]
CMD ["--runtime", "container", "--host", "0.0.0.0", "--target", "gpu", "--repository", "/models"]
