//! Work shared over the thread pool natively and run in turn in the browser, whose build has
//! no threads yet.

/// Runs `f` on every `size`-long piece of `data` with the piece's index.
pub(crate) fn for_each_chunk<T, F>(data: &mut [T], size: usize, f: F)
where
    T: Send,
    F: Fn((usize, &mut [T])) + Sync + Send,
{
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(size).enumerate().for_each(f);
    }
    #[cfg(target_family = "wasm")]
    data.chunks_mut(size).enumerate().for_each(f);
}
