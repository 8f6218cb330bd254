# The image configs/rayservice.yaml runs on every pod: this repository installed on Ray's GPU
# image, the same Ray (rayVersion, the ray[serve] pin in pyproject.toml) and Python (3.11).
#   docker build -t <registry>/common-ai-server:0.1.0 . && docker push <registry>/common-ai-server:0.1.0
# .dockerignore keeps secrets (.env), the local venv, git, caches and local data out of it.
FROM rayproject/ray:2.60.0-py311-gpu

# torchaudio needs ffmpeg (voice).
RUN sudo apt-get update \
    && sudo apt-get install -y --no-install-recommends ffmpeg \
    && sudo rm -rf /var/lib/apt/lists/*

COPY --chown=ray:users . /home/ray/common-ai-server
RUN pip install --no-cache-dir /home/ray/common-ai-server

# Optional: bake the default model weights in instead of downloading them at every start.
# RUN hf download stabilityai/sd-turbo && hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K
