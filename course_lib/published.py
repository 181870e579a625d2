"""What the published work reports, with its source: the figures the course sets its own against.

The published work is the Hugging Face blog post *Towards Encrypted Large Language Models with FHE*
(:data:`BLOG_POST`, August 2023) and its code, concrete-ml's ``use_case_examples/llm``
(:data:`USE_CASE_CODE`). The course re-measures what it can on its own machine (``benchmarks/``); the
figures here are the post's, quoted, never re-measured.
"""

#: The Hugging Face blog post the course follows.
BLOG_POST = "https://huggingface.co/blog/encrypted-llm"
#: Zama's code for that post.
USE_CASE_CODE = "https://github.com/zama-ai/concrete-ml/tree/main/use_case_examples/llm"

#: PBS of one GPT-2 head, projection included, at sequence length 6, "compiled with 8 bit-width" (the post).
PUBLISHED_GPT2_PBS_AT_6 = 11_622
