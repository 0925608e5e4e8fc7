//! The size of a WebAssembly module, and a crate's share of it: each function's body in
//! the code section, named by the `name` section (which `wasm-bindgen` and `wasm-opt`
//! keep), summed by the crate its mangled name belongs to. Inlined code counts for the
//! function it was inlined into, so a crate's share is its functions that stayed functions.

/// What one module measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sizes {
    /// The whole module, in bytes.
    pub total: u64,
    /// The code section's function bodies.
    pub code: u64,
    /// The bodies of functions whose name holds the crate's name.
    pub crate_code: u64,
    /// How many functions had a name.
    pub named: u64,
}

/// Reads an unsigned LEB128 number at `at`, moving past it.
fn leb(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*at).ok_or("the module ends inside a number")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 63 {
            return Err("a number in the module is too long".into());
        }
    }
}

fn usize_of(value: u64) -> Result<usize, String> {
    usize::try_from(value).map_err(|_| "a size in the module does not fit".to_owned())
}

/// Measures `module`: its size, its code, and the code of functions whose (mangled) name
/// contains `krate` (`conc_core`).
pub fn measure(module: &[u8], krate: &str) -> Result<Sizes, String> {
    let mut imported_functions = 0u64;
    let mut bodies: Vec<u64> = Vec::new();
    let mut names: Vec<(u64, String)> = Vec::new();
    for (id, _, body) in sections(module)? {
        let section = &module[body];
        match id {
            // Imports: count the functions, whose indices come first.
            2 => imported_functions = count_function_imports(section)?,
            // Code: each body's size.
            10 => {
                let mut p = 0;
                let count = leb(section, &mut p)?;
                for _ in 0..count {
                    let body = leb(section, &mut p)?;
                    bodies.push(body);
                    p += usize_of(body)?;
                }
            }
            // A custom section: `name`'s function names.
            0 => {
                let mut p = 0;
                let length = usize_of(leb(section, &mut p)?)?;
                let name = section
                    .get(p..p + length)
                    .ok_or("a custom section's name runs past its end")?;
                p += length;
                if name == b"name" {
                    names = function_names(&section[p..])?;
                }
            }
            _ => {}
        }
    }
    let code: u64 = bodies.iter().sum();
    let mut crate_code = 0;
    for (index, name) in &names {
        let Some(local) = index.checked_sub(imported_functions) else {
            continue;
        };
        if name.contains(krate) {
            crate_code += bodies.get(usize_of(local)?).copied().unwrap_or(0);
        }
    }
    Ok(Sizes {
        total: module.len() as u64,
        code,
        crate_code,
        named: names.len() as u64,
    })
}

/// `module` without its custom sections (names, producers, target features): what a
/// page ships once stripped.
pub fn strip_custom_sections(module: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = module[..8].to_vec();
    for (id, whole, _) in sections(module)? {
        if id != 0 {
            out.extend_from_slice(&module[whole]);
        }
    }
    Ok(out)
}

/// A section: its id, its whole extent (header included) and its body's.
type Section = (u8, std::ops::Range<usize>, std::ops::Range<usize>);

/// Each section of `module`.
fn sections(module: &[u8]) -> Result<Vec<Section>, String> {
    if module.get(..4) != Some(b"\0asm") || module.len() < 8 {
        return Err("not a WebAssembly module".into());
    }
    let mut found = Vec::new();
    let mut at = 8;
    while at < module.len() {
        let start = at;
        let id = module[at];
        at += 1;
        let size = usize_of(leb(module, &mut at)?)?;
        let end = at
            .checked_add(size)
            .filter(|e| *e <= module.len())
            .ok_or("a section runs past the end")?;
        found.push((id, start..end, at..end));
        at = end;
    }
    Ok(found)
}

fn count_function_imports(section: &[u8]) -> Result<u64, String> {
    let mut p = 0;
    let count = leb(section, &mut p)?;
    let mut functions = 0;
    for _ in 0..count {
        for _ in 0..2 {
            let length = usize_of(leb(section, &mut p)?)?;
            p += length;
        }
        let kind = *section.get(p).ok_or("an import runs past its section")?;
        p += 1;
        match kind {
            0 => {
                functions += 1;
                leb(section, &mut p)?;
            }
            1 => {
                // A table: its element type, then its limits.
                p += 1;
                limits(section, &mut p)?;
            }
            2 => limits(section, &mut p)?,
            3 => p += 2,
            4 => {
                p += 1;
                leb(section, &mut p)?;
            }
            other => return Err(format!("an import of unknown kind {other}")),
        }
    }
    Ok(functions)
}

fn limits(section: &[u8], p: &mut usize) -> Result<(), String> {
    let flags = *section.get(*p).ok_or("limits run past the section")?;
    *p += 1;
    leb(section, p)?;
    if flags & 1 == 1 {
        leb(section, p)?;
    }
    Ok(())
}

/// The `name` section's function names (subsection 1).
fn function_names(section: &[u8]) -> Result<Vec<(u64, String)>, String> {
    let mut p = 0;
    let mut names = Vec::new();
    while p < section.len() {
        let id = section[p];
        p += 1;
        let size = usize_of(leb(section, &mut p)?)?;
        let end = p + size;
        if id == 1 {
            let mut q = p;
            let count = leb(section, &mut q)?;
            for _ in 0..count {
                let index = leb(section, &mut q)?;
                let length = usize_of(leb(section, &mut q)?)?;
                let name = section
                    .get(q..q + length)
                    .ok_or("a function name runs past its section")?;
                q += length;
                names.push((index, String::from_utf8_lossy(name).into_owned()));
            }
        }
        p = end;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module of two functions, one named for the crate: its body counts for it.
    #[test]
    fn names_attribute_bodies() {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        // Type section: one type () -> ().
        module.extend([1, 4, 1, 0x60, 0, 0]);
        // Function section: two functions of type 0.
        module.extend([3, 3, 2, 0, 0]);
        // Code section: bodies of 2 and 4 bytes.
        module.extend([10, 9, 2, 2, 0, 0x0b, 4, 0, 1, 1, 0x0b]);
        // Name section: function 1 is `_ZN9conc_core1fE`.
        let name = b"_ZN9conc_core1fE";
        let mut sub = vec![1, 1];
        sub.push(name.len() as u8);
        sub.extend(name);
        let mut payload = vec![4];
        payload.extend(b"name");
        payload.push(1);
        payload.push(sub.len() as u8);
        payload.extend(&sub);
        module.push(0);
        module.push(payload.len() as u8);
        module.extend(&payload);
        let sizes = measure(&module, "conc_core").unwrap();
        assert_eq!(sizes.code, 6);
        assert_eq!(sizes.crate_code, 4);
        assert_eq!(sizes.named, 1);
        assert!(measure(b"nope", "x").is_err());
        let stripped = strip_custom_sections(&module).unwrap();
        assert_eq!(stripped.len(), module.len() - payload.len() - 2);
        assert_eq!(measure(&stripped, "conc_core").unwrap().named, 0);
    }
}
