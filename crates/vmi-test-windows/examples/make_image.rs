//! Writes a synthetic image: `make_image <GUID-age> <out.raw> [seed] [dump.dmp]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let key = args
        .get(1)
        .ok_or("usage: make_image <GUID-age> <out.raw> [seed] [dump.dmp]")?;
    let out = args.get(2).ok_or("missing output path")?;
    let seed = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let isf = vmi_test_windows::load_isf(key)?;
    let spec = vmi_test_windows::GuestSpec::with_options(vmi_test_windows::Options {
        seed,
        kdbg: args.get(4).is_some(),
        ..Default::default()
    });
    let img = vmi_test_windows::build(&isf, &spec)?;
    img.write_files(
        std::path::Path::new(out),
        args.get(4).map(std::path::Path::new),
    )?;
    Ok(())
}
