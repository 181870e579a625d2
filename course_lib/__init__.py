"""course_lib: the library behind the course "Running GPT-2 on encrypted data with FHE".

One module per concept, leaves first (see README.md, "course_lib at a glance"):

- :mod:`course_lib.quantization`: integer quantization parameters and quantizers;
- :mod:`course_lib.dual_array`: DualArray, a float and an integer array side by side;
- :mod:`course_lib.error_analysis`: how large quantization errors are, measured and bounded;
- :mod:`course_lib.attention`: one GPT-2 attention head on DualArray (clear, calibration and FHE alike);
- :mod:`course_lib.fast_attention`: the same head with a several times cheaper encrypted part;
- :mod:`course_lib.gpt2`: that head, or every head of a layer, swapped into a Hugging Face GPT-2;
- :mod:`course_lib.fhe` and :mod:`course_lib.keys`: the compiled circuit and its cached keys;
- :mod:`course_lib.contract`: the client/server contract (routes, artifact files, the circuit's description);
- :mod:`course_lib.generation`: greedy generation, one timed pass per token;
- :mod:`course_lib.transport`, :mod:`course_lib.server`, :mod:`course_lib.client`: the client/server split over HTTP;
- :mod:`course_lib.distributed`: the heads of a layer as Dask tasks;
- :mod:`course_lib.evaluation`: perplexity and top-k agreement;
- :mod:`course_lib.models`: load the bundled GPT-2 (``course-gpt2``) or OpenAI's ``gpt2``;
- :mod:`course_lib.data`: the evaluation passages and calibration prompts;
- :mod:`course_lib.corpus`: how the bundled model's training text was made and split;
- :mod:`course_lib.plots` and :mod:`course_lib.exercises`: the notebooks' figures and exercises.
"""

__version__ = "0.1.0"
