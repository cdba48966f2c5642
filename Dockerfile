# Slim CPU image. Build: docker build -t doctorai .   Run: docker run -p 7860:7860 doctorai
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    DOCTORAI_HOST=0.0.0.0 \
    DOCTORAI_PORT=7860 \
    DOCTORAI_DATA_DIR=/data

WORKDIR /app
COPY requirements.txt .
# Keep the image CPU-only: pass PyTorch's CPU wheel index as TORCH_INDEX_URL so pip takes
# torch 2.13.0+cpu instead of a multi-GB CUDA build from the default index.
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
 && pip install --no-cache-dir -r requirements.txt

RUN useradd --create-home --uid 1000 doctorai && mkdir -p /data && chown doctorai /data
COPY --chown=doctorai . .
USER doctorai

EXPOSE 7860
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7860/api/health', timeout=4).status == 200 else 1)"
CMD ["python", "app.py"]
