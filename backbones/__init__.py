"""The backbones the video tasks score with where no library of the field has the model, and
the thin loaders of the library models the tasks use (the libraries are in the `video` extra):

- `clip` — CLIP from open_clip (architecture, strict loading of OpenAI / open_clip checkpoints,
  open_clip's tokenizer) and VBench's CLIP preprocessing;
- `dino` — DINO ViT-B/16 from timm, with DINO's own position interpolation;
- `viclip` — ViCLIP (InternVid) video-text model: its space-time glue here, open_clip's
  transformer blocks and text tower (no library ships ViCLIP);
- `i3d` — Inflated 3D ConvNet (FVD; no library ships the PyTorch I3D of the FVD papers);
- `video_vit` — the VideoMAE-layout video ViT (UMT, VideoMAE-v2);
- `_common` — what several of them share (the MLP block, checkpoint reading, normalisation).

RAFT (vbench_dynamic_degree) is torchvision's, MUSIQ (vbench_imaging_quality) pyiqa's and
CoTracker2 (vbench_camera_motion) the co-tracker package's, used directly by their tasks. Installed as `harness.backbones` (package-dir
mapping in setup.py). Nothing here knows about tasks, methods, records or the runner, and no model
weights are downloaded: tasks locate the files (tasks/_weights.py) and pass paths in."""
