"""Training: fine-tune an encoder on sentence pairs, or pre-train one from scratch with masked-LM.

config.py   the configs; their fields declare the command-line flags
data.py     training data readers (corpus, unscored pairs, scored pairs)
losses.py   sentence-pair losses: CoSENT, cosine, in-batch negatives
heads.py    the masked-LM head and BERT's token corruption
tasks.py    what a step computes, how a dev set is scored and what is saved, per task
trainer.py  the loop, checkpoints, --resume and the run directory
jobs.py     finetune and pretrain end to end, ending in an exported artifact
cli.py      python -m model train {finetune,finetune-cross,pretrain}
"""
