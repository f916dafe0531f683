//! OpenCL kernel throughput: GFLOP/s for matmul, GB/s of memory traffic for the rest, each next
//! to the CPU's figure for the same op measured in the same run. Medians of repeated runs; each
//! OpenCL timing waits for the queue to finish. Run with
//! `cargo bench -p gpu --bench kernels [-- DEVICE_NUMBER]`.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::{Device, Tensor};

fn median_secs(mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed() < Duration::from_millis(1500) && times.len() < 100) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

fn main() {
    let ordinal = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(0);
    let ocl = match gpu::OpenClDevice::open(ordinal) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("OpenCL device {ordinal}: {} ({})\n", ocl.info.name, ocl.info.platform);
    let dev = ocl.device();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // Times `f` on the CPU and on the device with the same inputs; `work` is FLOPs or bytes.
    let row = |name: &str, unit: &str, work: f64, inputs: Vec<Tensor>, f: &dyn Fn(&[Tensor]) -> Tensor| {
        let time_on = |d: &Device| {
            let xs: Vec<Tensor> = inputs.iter().map(|t| t.to_device(d).unwrap()).collect();
            median_secs(|| {
                let y = f(&xs);
                if *d != Device::Cpu {
                    ocl.synchronize().unwrap();
                }
                drop(y);
            })
        };
        let (cpu, gpu) = (time_on(&Device::Cpu), time_on(&dev));
        println!("| {name:<34} | {:>9.2} | {:>9.2} | {unit} |", work / gpu / 1e9, work / cpu / 1e9);
    };
    println!("| kernel | OpenCL | CPU | unit |");
    println!("|---|---:|---:|---|");
    for (m, k, n) in [(256, 256, 256), (512, 512, 512), (1024, 256, 768)] {
        let a = Tensor::randn(&[m, k], 1.0, &mut rng);
        let b = Tensor::randn(&[k, n], 1.0, &mut rng);
        row(&format!("matmul {m}x{k} @ {k}x{n}"), "GFLOP/s", 2.0 * (m * k * n) as f64, vec![a, b], &|t| {
            t[0].matmul(&t[1]).unwrap()
        });
    }
    let a = Tensor::randn(&[8, 8, 256, 32], 1.0, &mut rng);
    let b = Tensor::randn(&[8, 8, 256, 32], 1.0, &mut rng);
    row(
        "matmul [8,8,256,32] @ ᵀ (attention)",
        "GFLOP/s",
        2.0 * (64 * 256 * 256 * 32) as f64,
        vec![a, b],
        &|t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
    );
    let n = 1 << 22;
    let x = Tensor::randn(&[n / 1024, 1024], 1.0, &mut rng);
    let y = Tensor::randn(&[n / 1024, 1024], 1.0, &mut rng);
    let bytes = (n * 4) as f64;
    row("add (4M)", "GB/s", 3.0 * bytes, vec![x.clone(), y], &|t| t[0].add(&t[1]).unwrap());
    row("exp (4M)", "GB/s", 2.0 * bytes, vec![x.clone()], &|t| t[0].exp().unwrap());
    row("transpose copy (4M)", "GB/s", 2.0 * bytes, vec![x.clone()], &|t| {
        t[0].t().unwrap().contiguous().unwrap()
    });
    row("sum, last axis (4M)", "GB/s", bytes, vec![x.clone()], &|t| t[0].sum(1).unwrap());
    row("softmax, last axis (4M)", "GB/s", 2.0 * bytes, vec![x.clone()], &|t| t[0].softmax(1).unwrap());
    let h = Tensor::randn(&[n / 256, 256], 1.0, &mut rng);
    let (w, b) = (Tensor::ones(&[256]), Tensor::zeros(&[256]));
    row("layer norm [16384, 256]", "GB/s", 2.0 * bytes, vec![h, w, b], &|t| {
        t[0].layer_norm(&t[1], &t[2], 1e-5).unwrap()
    });
    let table = Tensor::randn(&[256, 256], 1.0, &mut rng);
    let ids: Vec<usize> = (0..16384).map(|i| (i * 37) % 256).collect();
    row("embedding lookup [16384 x 256]", "GB/s", 2.0 * (16384 * 256 * 4) as f64, vec![table], &|t| {
        t[0].embedding(&ids, &[16384]).unwrap()
    });
}
