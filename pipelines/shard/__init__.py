"""``dpmesh-shard``: an image corpus into WebDataset shards (see README "Sharding a corpus").

``job`` builds and runs the graph; ``listing`` and ``plan`` turn the corpus into planned shards; ``write``
reads, checks and writes one planned shard; ``manifest`` derives the run's table of contents from what the
shards recorded. This package never imports torch nor the label job.
"""
