import sys
from pathlib import Path

import torch

# tests import their exact references from tests/reference.py
sys.path.insert(0, str(Path(__file__).parent))

# CPU and GPU agree only with TF32 off; tests never rely on global seeding
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
