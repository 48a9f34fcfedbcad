"""SpeechLLM decoder redundancy (Moumen et al.): a frozen speech encoder -> projector -> causal
LM decoder, trained for ASR and a speech-translation stand-in on spoken command sentences; the
angular distance between decoder layers for text and speech input, decoder-layer pruning by
WER with LoRA healing, and the overlap of the redundant blocks across encoders, tasks and input
types. Modules: ``text``, ``speech``, ``tokenizer``, ``settings``, ``model``, ``pretrain``,
``train``, ``metrics``, ``similarity``, ``pruning``, ``heal``, ``healing`` (the n = 0 control and
joint healing cells), ``report``, ``run``, ``plan``.
Importing the package imports no torch."""
