"""The local GPU worker: ``r2v worker`` serves Wan 2.1 VACE reference-to-video on your own GPUs.

It speaks the task + webhook protocol of ``worker.protocol`` (the bot's ``local`` provider is
its client). Its heavy dependencies (torch, diffusers…) are the optional ``gpu`` extra and are
imported only when the model loads, so the bot can import ``worker.protocol`` without them.
"""
