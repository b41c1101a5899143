"""Talks to cloud experts: OpenAI-compatible endpoints (OpenAI, vLLM, TGI, llama.cpp's
server, Ollama's /v1, gateways) with layered timeouts, retries and a circuit breaker.

``client`` (BridgeClient, Endpoint) is the way in; ``errors`` draws the exception tree;
``retry``, ``breaker``, ``timeouts``, ``credentials``, ``sse``, ``wire`` and ``usage`` each
own one concern. Nothing here imports the daemon: ``agent/experts/cloud.py`` adapts it.
"""
