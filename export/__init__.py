"""edgeroute's offline pipeline: collect the expert table, label, train, export, quantize.

Heavy imports (torch, transformers, optimum) happen inside the functions that need them.
"""
