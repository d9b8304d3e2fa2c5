// `sqlx::migrate!` embeds the migrations folder at compile time: rebuild
// when a migration is added, or the binary would not apply it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
