//! Reading the Prometheus text format a service exports: one sample by its
//! exact series name, so a test can require that a metric exists and moved.

/// The value of `series` (a metric name, with its labels as the service
/// renders them, sorted by name: `adder_requests_total{code="ok",method="http_add"}`)
/// in `text`; `None` if no sample of that series is exported.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a numeric sample"))
}

/// `sample`, panicking with the whole exposition when the series is missing.
pub fn require(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} is not exported:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_exact_series() {
        let text = "# HELP x_total X\nx_total{a=\"1\"} 3\nx_total 7\nx_total_more 9\n";
        assert_eq!(sample(text, "x_total{a=\"1\"}"), Some(3.0));
        assert_eq!(sample(text, "x_total"), Some(7.0));
        assert_eq!(sample(text, "x_total{a=\"2\"}"), None);
        assert_eq!(sample(text, "x"), None);
    }
}
