"""The jobs a user runs: the main job, the sweep, GLUE/SuperGLUE submission files. They
sit on top: they may import every layer, and nothing but entry points imports them."""
