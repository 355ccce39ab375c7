"""Policy plugins: WebAssembly risk and guard rules, run in wasmtime (``plugins.wasm``)
and loaded from the records for the leader's loops (``plugins.host``)."""
