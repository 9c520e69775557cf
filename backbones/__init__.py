"""The neural-network backbones the tasks score with, in plain PyTorch (torchvision, timm,
open_clip and pyiqa cannot share the harness's environment): one file per model family, each with
the module definitions, the loading of the released checkpoints (parameter names follow those
files, so they load with key checks) and the input preprocessing the original code applies.

- `clip` — OpenAI CLIP (image tower, text tower, the whole model); `clip_tokenizer` its BPE tokenizer
  (merges vendored in `data/`);
- `dino` — DINO ViT-B/16; `viclip` — ViCLIP (InternVid) video-text model;
- `video_vit` — the VideoMAE-layout video ViT (UMT, VideoMAE-v2); `i3d` — Inflated 3D ConvNet;
- `musiq` — MUSIQ image-quality transformer;
- `_common` — what several of them share (the MLP block, checkpoint reading, normalisation).

Installed as `harness.backbones` (package-dir mapping in setup.py). Tasks use them (the VBench
dimensions, FVD, ChronoMagic); nothing here knows about tasks, methods, records or the runner,
and no model weights are downloaded: tasks locate the files (tasks/_weights.py) and pass paths in."""
