"""Alignment on an instruction set (Yu et al., ICML 2024, section 5): annotate instructions with
responses (a local model or any OpenAI-compatible endpoint), fine-tune a student with LoRA SFT on
them, and measure the aligned students (held-out response NLL, judged win rates).

Privacy: an annotation, an adapter or a score keeps the class of the instructions it came from.
A private set never goes to a remote endpoint unless params say so explicitly
(``allow_remote_private``); the stage refuses otherwise and the lineage audit checks it on the DAG.
"""
