;; change-freeze: a guard plugin (Aether plugin ABI 1, docs/plugins.md).
;;
;; Refuses every node drain the controller considers ("kind":"drain" in the
;; decision) and allows everything else: a change freeze for nodes while apps
;; may still scale. It imports nothing; its memory is one 64 KiB page.
;;
;; Build:  wat2wasm change_freeze.wat -o change_freeze.wasm      (Debian: apt-get install wabt)
;;    or:  python -c "import wasmtime,sys; sys.stdout.buffer.write(wasmtime.wat2wasm(open('change_freeze.wat').read()))" > change_freeze.wasm
;; Add:    aether plugins add change_freeze.wasm --name change-freeze --kind guard --version 1
(module
  (memory (export "memory") 1)
  ;; the needle: the decision's kind as the server writes it (compact, sorted JSON)
  (data (i32.const 0) "\"kind\":\"drain\"")
  (data (i32.const 64) "{\"allow\":false,\"reason\":\"change freeze: no node drains until it is lifted\"}")
  (data (i32.const 256) "{\"allow\":true}")
  (global $next (mut i32) (i32.const 1024))

  (func (export "abi_version") (result i32) (i32.const 1))

  ;; a bump allocator: every call gets a fresh store, so nothing is ever freed
  (func (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $ptr))

  ;; does memory[$ptr, $ptr+$len) contain the 14-byte needle at 0?
  (func $contains (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $j i32)
    (block $done
      (loop $scan
        (br_if $done (i32.gt_s (i32.add (local.get $i) (i32.const 14)) (local.get $len)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $cmp
            (br_if $mismatch
              (i32.ne
                (i32.load8_u (i32.add (i32.add (local.get $ptr) (local.get $i)) (local.get $j)))
                (i32.load8_u (local.get $j))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (if (i32.eq (local.get $j) (i32.const 14)) (then (return (i32.const 1))))
            (br $cmp)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  ;; (out_ptr << 32) | out_len
  (func $result (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  (func (export "evaluate") (param $ptr i32) (param $len i32) (result i64)
    (if (result i64) (call $contains (local.get $ptr) (local.get $len))
      (then (call $result (i32.const 64) (i32.const 75)))
      (else (call $result (i32.const 256) (i32.const 14)))))
)
