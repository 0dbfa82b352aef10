//! LZO1X decompression (work in progress in this commit).
