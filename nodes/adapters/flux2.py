"""Flux.2 (dev and Klein), ComfyUI's `Flux2`: Flux's own model class with `global_modulation` and
SiLU-gated MLPs (`mlp_silu_act`). Flux.2-dev has 8 double + 48 single blocks (D = 6144), Klein 4B
5 + 20 (D = 3072), Klein 9B 8 + 24 (D = 4096).

- Hook: `patches_replace["dit"]` double_block / single_block, as Flux.1.
- Router input: [txt; img] of a double block's input, the joint tokens of a single block's (reference
  latents, when a workflow gives some, are part of the img stream the block sees).
- Conditioning: the blocks get no vector of their own. The model turns its one timestep(+guidance)
  embedding into shared modulations, and the hook's `vec` holds them: ((img mod1, mod2), (txt mod1,
  mod2)) for a double block, one ModulationOut for a single block, fields [B, 1 or 2, D]. As for
  Chroma, the router reads the first modulation's scale of the image stream, [B, D]; with reference
  latents at timestep zero (`index_timestep_zero`) the fields carry a second entry for the
  reference tokens, and the router reads the first (the sampled image's).
- Width: the gated MLPs. A double block's img and txt MLPs are Linear(D, 2M) = [gate M; up M] ->
  silu(gate) * up -> Linear(M, D); a single block's fused linear1 is [qkv 3D; gate M; up M] and its
  linear2 reads [attn D; mlp M]. Width k keeps gate rows 0..k, up rows M..M+k and out columns 0..k.
- Blocks add into their inputs in place (as Flux.1): the engine hands them copies.

Ovis (`yak_mlp`: separate gate / up / down projections on Flux's class) is not this family.
"""
from __future__ import annotations

import comfy.ldm.flux.model

from .chroma import ChromaAdapter
from .flux import global_modulation, mlp_refusal


class Flux2Adapter(ChromaAdapter):
    family = "flux2"
    model_classes = (comfy.ldm.flux.model.Flux,)

    def matches(self, dm) -> bool:
        return isinstance(dm, self.model_classes) and global_modulation(dm)

    def refusal(self, dm) -> str | None:
        return mlp_refusal(dm, "a Flux.2-type model", "swiglu", "where Flux.2 gates its MLPs")
