//! `ddpm bench --what convs` end to end on the emulator at a tiny size: one JSON line per (shape, pass) with the
//! fields pytorch/conv_bench.py prints and scripts/compare_convs.py joins on, and its refusals.

use std::collections::BTreeMap;
use std::process::{Command, Output};

fn ddpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

/// A JSON value of a flat object: a string, a number or a boolean.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// Parses one flat JSON object (no nesting, no escapes beyond `\"` and `\\`), panicking on anything else.
fn parse_flat_object(line: &str) -> BTreeMap<String, Value> {
    let body =
        line.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap_or_else(|| panic!("not an object: {line}"));
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    let string = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        assert_eq!(chars.next(), Some('"'), "expected a string in {line}");
        let mut s = String::new();
        loop {
            match chars.next().unwrap_or_else(|| panic!("unterminated string in {line}")) {
                '"' => return s,
                '\\' => s.push(chars.next().unwrap()),
                c => s.push(c),
            }
        }
    };
    while chars.peek().is_some() {
        let key = string(&mut chars);
        assert_eq!(chars.next(), Some(':'), "expected ':' after {key:?} in {line}");
        let value = if chars.peek() == Some(&'"') {
            Value::Str(string(&mut chars))
        } else {
            let raw: String = std::iter::from_fn(|| chars.next_if(|&c| c != ',')).collect();
            match raw.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::Num(raw.parse().unwrap_or_else(|_| panic!("bad value {raw:?} for {key:?} in {line}"))),
            }
        };
        assert!(out.insert(key.clone(), value).is_none(), "{key:?} twice in {line}");
        match chars.next() {
            Some(',') | None => {}
            Some(c) => panic!("unexpected {c:?} in {line}"),
        }
    }
    out
}

#[test]
fn bench_convs_prints_one_json_line_per_shape_and_pass_on_the_emulator() {
    let r =
        ddpm(&["bench", "--what", "convs", "--device", "emu", "--batch", "2", "--base", "8", "--iters", "1", "--json"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    assert!(r.status.success(), "{stderr}");
    // The UNet's distinct conv shapes at base 8 (cin, cout, side, k, stride, transposed), in forward order.
    let shapes = [
        ("in_conv", 1, 8, 32, 3, 1, false),
        ("down1.conv1", 8, 8, 32, 3, 1, false),
        ("pool1", 8, 16, 32, 3, 2, false),
        ("down2.conv1", 16, 16, 16, 3, 1, false),
        ("pool2", 16, 32, 16, 3, 2, false),
        ("mid.conv1", 32, 32, 8, 3, 1, false),
        ("up2", 32, 16, 8, 4, 2, true),
        ("dec2.conv1", 32, 16, 16, 3, 1, false),
        ("dec2.skip", 32, 16, 16, 1, 1, false),
        ("up1", 16, 8, 16, 4, 2, true),
        ("dec1.conv1", 16, 8, 32, 3, 1, false),
        ("dec1.skip", 16, 8, 32, 1, 1, false),
        ("out_conv", 8, 1, 32, 3, 1, false),
    ];
    let mut expected = Vec::new();
    for s in shapes {
        for pass in ["forward", "input_grad", "weight_grad"] {
            // The image needs no gradient, so training never computes in_conv's input gradient.
            if !(s.0 == "in_conv" && pass == "input_grad") {
                expected.push((s, pass));
            }
        }
    }
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "one line per shape and pass:\n{stdout}");
    let num = |v: &Value| match v {
        Value::Num(x) => *x,
        other => panic!("expected a number, got {other:?}"),
    };
    for (line, ((name, cin, cout, side, k, stride, transposed), pass)) in lines.iter().zip(expected) {
        let o = parse_flat_object(line);
        let get = |f: &str| o.get(f).unwrap_or_else(|| panic!("no field {f:?} in {line}"));
        assert_eq!(get("name"), &Value::Str(name.into()), "{line}");
        assert_eq!(get("pass"), &Value::Str(pass.into()), "{line}");
        assert_eq!(get("precision"), &Value::Str("bf16".into()), "{line}");
        assert_eq!(get("transposed"), &Value::Bool(transposed), "{line}");
        for (field, want) in
            [("n", 2), ("cin", cin), ("cout", cout), ("h", side), ("w", side), ("k", k), ("stride", stride)]
        {
            assert_eq!(num(get(field)), want as f64, "{field} in {line}");
        }
        let (ms, gflops) = (num(get("median_ms")), num(get("gflops")));
        assert!(ms > 0.0 && ms.is_finite() && gflops >= 0.0 && gflops.is_finite(), "{line}");
    }
    // The merged layers of the 3x3 b->b shape.
    let first_b = parse_flat_object(lines[2]);
    assert_eq!(first_b["layers"], Value::Str("down1.conv1 down1.conv2 dec1.conv2".into()));
}

#[test]
fn bench_convs_table_and_refusals() {
    let r = ddpm(&["bench", "--what", "convs", "--device", "cpu", "--batch", "1", "--base", "8", "--iters", "1"]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("median ms") && stdout.contains("up2") && stdout.contains("one training step"), "{stdout}");
    for (args, needle) in [
        (&["--iters", "0"][..], "--iters"),
        (&["--base", "7"][..], "base must be a positive multiple"),
        (&["--precision", "bf16"][..], "no bf16 path"),
    ] {
        let r = ddpm(&[&["bench", "--what", "convs", "--device", "cpu", "--batch", "1"][..], args].concat());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && !err.contains("panicked") && err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn bench_model_prints_one_json_object_per_step_kind_and_refuses_what_it_cannot_predict() {
    let small = ["--batch", "4", "--base", "8", "--t-dim", "16", "--model", "h200", "--json"];
    let r = ddpm(&[&["bench", "--what", "train"][..], &small].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let train = String::from_utf8_lossy(&r.stdout).to_string();
    let r = ddpm(&[&["bench", "--what", "sample"][..], &small].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let sample = String::from_utf8_lossy(&r.stdout).to_string();
    let objects: Vec<_> = train.lines().chain(sample.lines()).map(parse_flat_object).collect();
    let steps: Vec<_> = objects.iter().map(|o| &o["step"]).collect();
    assert_eq!(steps, [&Value::Str("train".into()), &Value::Str("ddim".into()), &Value::Str("ddpm".into())]);
    for o in &objects {
        let num = |f: &str| match o.get(f) {
            Some(Value::Num(x)) => *x,
            other => panic!("field {f}: {other:?} in {o:?}"),
        };
        for f in ["launches", "tc_flops", "dram_bytes", "predicted_ms", "predicted_ms_graphs"] {
            assert!(num(f) > 0.0, "{f} in {o:?}");
        }
        // A step after the first reuses every buffer, and nothing in it waits for the device. Each is a replay of
        // a captured step (one graph launch, nothing uploaded), so its time is predicted with the graph's gaps.
        assert_eq!((num("allocs"), num("host_syncs")), (0.0, 0.0), "{o:?}");
        assert_eq!((num("graph_launches"), num("h2d_bytes"), num("d2h_bytes")), (1.0, 0.0, 0.0), "{o:?}");
        assert_eq!(num("predicted_ms_graphs"), num("predicted_ms"), "{o:?}");
        assert_eq!(num("batch"), 4.0);
        assert_eq!(o["precision"], Value::Str("bf16".into()));
    }
    // The table names the kernels.
    let r = ddpm(&["bench", "--what", "train", "--batch", "4", "--base", "8", "--t-dim", "16", "--model", "h200"]);
    let table = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && table.contains("conv_gather_mma") && table.contains("adamw_ema"), "{table}");
    // The training step measured is a replay of the epoch's captured step: one graph launch. Launch by launch
    // (--no-graphs) it is one launch shorter: no plan to move on.
    assert_eq!(objects[0]["graph_launches"], Value::Num(1.0), "{:?}", objects[0]);
    let r = ddpm(&[&["bench", "--what", "train", "--no-graphs"][..], &small].concat());
    let plain = parse_flat_object(String::from_utf8_lossy(&r.stdout).lines().next().unwrap_or_default());
    assert_eq!(plain["graph_launches"], Value::Num(0.0), "{plain:?}");
    let count = |o: &BTreeMap<String, Value>| match o["launches"] {
        Value::Num(x) => x,
        _ => panic!("launches in {o:?}"),
    };
    assert_eq!(count(&plain) + 1.0, count(&objects[0]), "{plain:?}");
    // Launched one by one, a step is predicted with the longer gaps, and a sampler step uploads its time sinusoid
    // and its operand (16 f32 and 16 bf16 values per image) and makes two launches fewer: the sinusoid is not read
    // from a plan, and there is no plan to move on.
    let r = ddpm(&[&["bench", "--what", "sample", "--no-graphs"][..], &small].concat());
    let plain_sample: Vec<_> = String::from_utf8_lossy(&r.stdout).lines().map(parse_flat_object).collect();
    for (p, graphed) in [&plain, &plain_sample[0], &plain_sample[1]].into_iter().zip(&objects) {
        let num = |o: &BTreeMap<String, Value>, f: &str| match o[f] {
            Value::Num(x) => x,
            _ => panic!("{f} in {o:?}"),
        };
        assert!(num(p, "predicted_ms_graphs") < num(p, "predicted_ms"), "{p:?}");
        if graphed["step"] != Value::Str("train".into()) {
            assert_eq!((num(p, "h2d_bytes"), count(p) + 2.0), (4.0 * 6.0 * 16.0, count(graphed)), "{p:?}");
        }
    }
    // With --launches, one numbered line per launch follows: as many as the JSON's count, the optimiser last, then
    // (with graphs) the plan moved on.
    for (graphs, last) in [(&[][..], ["adamw_ema", "plan_advance"]), (&["--no-graphs"][..], ["", "adamw_ema"])] {
        let args = [&["bench", "--what", "train", "--launches"][..], &small[..small.len() - 1], graphs].concat();
        let listing = String::from_utf8_lossy(&ddpm(&args).stdout).to_string();
        let numbered: Vec<_> =
            listing.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
        let want = if graphs.is_empty() { count(&objects[0]) } else { count(&plain) };
        assert_eq!(numbered.len() as f64, want, "{listing}");
        assert!(
            numbered[numbered.len() - 2].contains(last[0]) && numbered.last().unwrap().contains(last[1]),
            "{listing}"
        );
    }
    for (args, needle) in [
        (&["--model", "a100"][..], "unknown device model"),
        (&["--model", "h200", "--device", "cpu"][..], "--device does not apply"),
        (&["--model", "h200", "--what", "convs"][..], "whole steps"),
        (&["--launches"][..], "--model"),
    ] {
        let r = ddpm(&[&["bench", "--batch", "2", "--base", "8"][..], args].concat());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && !err.contains("panicked") && err.contains(needle), "{args:?}: {err}");
    }
}
