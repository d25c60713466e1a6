//! `schema.graphql` is the SDL the server serves, with sorted fields.

#[test]
fn schema_graphql_is_current() {
    let sdl = podium::graphql::sdl();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != sdl {
        std::fs::write(path, &sdl).expect("writing schema.graphql");
        panic!(
            "schema.graphql differed from the schema and has been regenerated: review and commit it"
        );
    }
}
