fn main() {
    println!("trellis");
}
