-- wrk: the non-streamed POST /api/generate of the small-request scenario.
wrk.method = "POST"
wrk.body = '{"model":"llama3.2","prompt":"Why is the sky blue?","stream":false}'
wrk.headers["Content-Type"] = "application/json"
